//! The caller a verified client certificate names: one field of the leaf
//! (`tls.client_identity`) becomes an [`Identity`] like a JWT's `sub`, with
//! `x-user-id` as its upstream metadata and no roles or scopes.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::{config::ClientIdentityField, policy::Identity};

/// The issuer of every client-certificate identity: its subjects never
/// share a rate-limit key with a token's.
const CLIENT_CERTIFICATE_ISSUER: &str = "tls-client-certificate";

const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");

/// The identity `leaf` names by `field`; `None` when it has no such field,
/// or one that is not valid header text.
pub(super) fn identity(leaf: &CertificateDer<'_>, field: ClientIdentityField) -> Option<Identity> {
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let subject: String = match field {
        ClientIdentityField::SubjectCn => certificate
            .subject()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok())?
            .to_owned(),
        ClientIdentityField::SanDns
        | ClientIdentityField::SanUri
        | ClientIdentityField::SanEmail => {
            let names = certificate.subject_alternative_name().ok()??;
            names
                .value
                .general_names
                .iter()
                .find_map(|name| match (field, name) {
                    (ClientIdentityField::SanDns, GeneralName::DNSName(value))
                    | (ClientIdentityField::SanUri, GeneralName::URI(value))
                    | (ClientIdentityField::SanEmail, GeneralName::RFC822Name(value)) => {
                        Some(*value)
                    }
                    _ => None,
                })?
                .to_owned()
        }
    };
    let value = HeaderValue::from_str(&subject).ok()?;
    Some(Identity {
        issuer: Arc::from(CLIENT_CERTIFICATE_ISSUER),
        subject: subject.into(),
        roles: Box::default(),
        scopes: Box::default(),
        metadata: Box::new([(X_USER_ID, value)]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf() -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["svc.mesh.test".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "billing-service");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://mesh.test/billing".try_into().unwrap(),
        ));
        params.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            "ops@mesh.test".try_into().unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn each_field_names_the_caller() {
        let leaf = leaf();
        for (field, expected) in [
            (ClientIdentityField::SubjectCn, "billing-service"),
            (ClientIdentityField::SanDns, "svc.mesh.test"),
            (ClientIdentityField::SanUri, "spiffe://mesh.test/billing"),
            (ClientIdentityField::SanEmail, "ops@mesh.test"),
        ] {
            let identity = identity(&leaf, field).unwrap();
            assert_eq!(&*identity.subject, expected, "{field:?}");
            assert_eq!(identity.metadata[0].1, expected);
            assert_eq!(&*identity.issuer, CLIENT_CERTIFICATE_ISSUER);
        }
    }

    #[test]
    fn a_certificate_without_the_field_names_nobody() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut params = params;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let leaf = params.self_signed(&key).unwrap().der().clone();
        assert!(identity(&leaf, ClientIdentityField::SubjectCn).is_none());
        assert!(identity(&leaf, ClientIdentityField::SanUri).is_none());
    }
}
