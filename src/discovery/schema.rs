//! Which services of a server are served, and the descriptor set made of the
//! files a server sent: imports before the files that import them, each
//! file's bytes as sent except for the services not served.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use globset::{Glob, GlobSet, GlobSetBuilder};
use prost::{
    encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType},
    Message as _,
};

use super::ReadError;

/// `FileDescriptorProto.service`.
const SERVICE_FIELD: u32 = 6;

/// One file as a server sent it, and decoded for its name, package,
/// imports and services.
#[derive(Debug)]
pub(super) struct File {
    pub bytes: Bytes,
    pub proto: prost_types::FileDescriptorProto,
}

/// The services of a server that are served: those of the `services` globs
/// (default: all but `grpc.*`), never the reflection or health services.
#[derive(Debug, Clone)]
pub(super) struct Selection {
    globs: Option<GlobSet>,
}

impl Selection {
    /// `globs` were checked with the config.
    pub(super) fn new(globs: &[String]) -> Result<Self, globset::Error> {
        if globs.is_empty() {
            return Ok(Self { globs: None });
        }
        let mut set = GlobSetBuilder::new();
        for glob in globs {
            set.add(Glob::new(glob)?);
        }
        Ok(Self {
            globs: Some(set.build()?),
        })
    }

    pub(super) fn serves(&self, service: &str) -> bool {
        if service.starts_with("grpc.reflection.") || service.starts_with("grpc.health.") {
            return false;
        }
        match &self.globs {
            Some(globs) => globs.is_match(service),
            None => !service.starts_with("grpc."),
        }
    }
}

/// The serialized `FileDescriptorSet` of `files`, in an order that depends
/// only on the files: by name, each after the files it imports.
pub(super) fn descriptor_set(
    files: &BTreeMap<String, File>,
    selection: &Selection,
) -> Result<Bytes, ReadError> {
    let mut out = Vec::with_capacity(files.values().map(|f| f.bytes.len() + 8).sum());
    for name in import_order(files)? {
        let file = &files[name];
        let bytes = served_part(file, selection)?;
        prost::encoding::bytes::encode(1, &bytes, &mut out);
    }
    Ok(Bytes::from(out))
}

/// Kahn's algorithm over the imports, smallest name first among the ready.
fn import_order(files: &BTreeMap<String, File>) -> Result<Vec<&str>, ReadError> {
    let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
    let mut importers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, file) in files {
        let imports: BTreeSet<&str> = file.proto.dependency.iter().map(String::as_str).collect();
        waiting.insert(name.as_str(), imports.len());
        for import in imports {
            importers.entry(import).or_default().push(name.as_str());
        }
    }
    let mut ready: BTreeSet<&str> = (waiting.iter())
        .filter(|(_, count)| **count == 0)
        .map(|(name, _)| *name)
        .collect();
    let mut order = Vec::with_capacity(files.len());
    while let Some(name) = ready.pop_first() {
        order.push(name);
        for &importer in importers.get(name).into_iter().flatten() {
            if let Some(count) = waiting.get_mut(importer) {
                *count -= 1;
                if *count == 0 {
                    ready.insert(importer);
                }
            }
        }
    }
    if order.len() < files.len() {
        let cycle: Vec<&str> = (waiting.iter())
            .filter(|(_, count)| **count > 0)
            .map(|(name, _)| *name)
            .collect();
        return Err(ReadError::Garbage(format!(
            "its files import each other in a circle: {}",
            cycle.join(", ")
        )));
    }
    Ok(order)
}

/// The file's bytes as sent, without the services that are not served:
/// re-encoding a decoded file would lose its options (`google.api.http`).
fn served_part(file: &File, selection: &Selection) -> Result<Bytes, ReadError> {
    let package = file.proto.package();
    let full_name = |service: &str| match package {
        "" => service.to_owned(),
        package => format!("{package}.{service}"),
    };
    if (file.proto.service.iter()).all(|service| selection.serves(&full_name(service.name()))) {
        return Ok(file.bytes.clone());
    }
    let garbage = |err: &dyn std::fmt::Display| {
        ReadError::Garbage(format!(
            "file `{}` does not decode: {err}",
            file.proto.name()
        ))
    };
    let mut kept = Vec::with_capacity(file.bytes.len());
    let mut rest: &[u8] = &file.bytes;
    while !rest.is_empty() {
        let field = rest;
        let (tag, wire_type) = decode_key(&mut rest).map_err(|e| garbage(&e))?;
        if tag == SERVICE_FIELD && wire_type == WireType::LengthDelimited {
            let len = decode_varint(&mut rest).map_err(|e| garbage(&e))?;
            let len = usize::try_from(len)
                .ok()
                .filter(|len| *len <= rest.len())
                .ok_or_else(|| garbage(&"a service past the file's end"))?;
            let (service, after) = rest.split_at(len);
            rest = after;
            let service =
                prost_types::ServiceDescriptorProto::decode(service).map_err(|e| garbage(&e))?;
            if !selection.serves(&full_name(service.name())) {
                continue;
            }
        } else {
            skip_field(wire_type, tag, &mut rest, DecodeContext::default())
                .map_err(|e| garbage(&e))?;
        }
        kept.extend_from_slice(&field[..field.len() - rest.len()]);
    }
    Ok(Bytes::from(kept))
}

#[cfg(test)]
mod tests {
    use prost_types::{FileDescriptorProto, ServiceDescriptorProto};

    use super::*;

    fn file(name: &str, imports: &[&str], services: &[&str]) -> (String, File) {
        let proto = FileDescriptorProto {
            name: Some(name.into()),
            package: Some("acme".into()),
            dependency: imports.iter().map(|i| (*i).to_owned()).collect(),
            service: (services.iter())
                .map(|s| ServiceDescriptorProto {
                    name: Some((*s).to_owned()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let bytes = Bytes::from(proto.encode_to_vec());
        (name.to_owned(), File { bytes, proto })
    }

    #[test]
    fn by_default_every_service_but_grpc_ones_is_served_and_never_reflection_or_health() {
        let default = Selection::new(&[]).unwrap();
        assert!(default.serves("acme.orders.v1.OrderService"));
        assert!(!default.serves("grpc.testing.Echo"));
        let all = Selection::new(&["*".into()]).unwrap();
        assert!(all.serves("grpc.testing.Echo"));
        assert!(!all.serves("grpc.reflection.v1.ServerReflection"));
        assert!(!all.serves("grpc.reflection.v1alpha.ServerReflection"));
        assert!(!all.serves("grpc.health.v1.Health"));
        let orders = Selection::new(&["acme.orders.*".into()]).unwrap();
        assert!(orders.serves("acme.orders.v1.OrderService"));
        assert!(!orders.serves("acme.users.v1.UserService"));
    }

    #[test]
    fn imports_come_first_whatever_order_the_server_sent() {
        let files: BTreeMap<String, File> = [
            file("a.proto", &["z.proto", "m.proto"], &[]),
            file("m.proto", &["z.proto"], &[]),
            file("z.proto", &[], &[]),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            import_order(&files).unwrap(),
            ["z.proto", "m.proto", "a.proto"]
        );
    }

    #[test]
    fn files_importing_each_other_are_refused_naming_them() {
        let files: BTreeMap<String, File> = [
            file("a.proto", &["b.proto"], &[]),
            file("b.proto", &["a.proto"], &[]),
            file("c.proto", &[], &[]),
        ]
        .into_iter()
        .collect();
        let err = import_order(&files).unwrap_err().to_string();
        assert!(err.contains("a.proto, b.proto"), "{err}");
    }

    #[test]
    fn services_not_served_are_cut_and_the_rest_kept_byte_for_byte() {
        let (_, mixed) = file("a.proto", &["x.proto"], &["Orders", "Internal"]);
        let selection = Selection::new(&["acme.Orders".into()]).unwrap();
        let served = served_part(&mixed, &selection).unwrap();
        let decoded = FileDescriptorProto::decode(served.as_ref()).unwrap();
        let names: Vec<&str> = decoded.service.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["Orders"]);
        assert_eq!(decoded.dependency, ["x.proto"]);
        let (_, whole) = file("b.proto", &[], &["Orders"]);
        assert_eq!(served_part(&whole, &selection).unwrap(), whole.bytes);
    }
}
