//! The `protogate` command line: parse, load the config, call into the library.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use prost::Message as _;
use protogate::{
    admin::AdminClient,
    config::{resolve_addr, AdminToken, CertificateConfig, TlsConfig},
    openapi,
    registry::{Catalog, DescriptorSet, ProtoSources, RouteTable, UploadFormat},
    token::{Claims, SigningKey},
    Config, Server,
};
use tokio::net::TcpListener;

/// The admin API's bearer token, for `serve` and the `admin` commands.
const ADMIN_TOKEN_ENV: &str = "PROTOGATE_ADMIN_TOKEN";

#[derive(Debug, Parser)]
#[command(
    name = "protogate",
    version,
    about = "REST-to-gRPC transcoding API gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the REST routes of the configured descriptor sets.
    Serve(ServeArgs),
    /// Run the example services in-process behind the gateway.
    Demo {
        /// Address of the public listener (host:port; a host name is resolved).
        #[arg(long, default_value = "127.0.0.1:8080", value_parser = resolve_addr)]
        listen: SocketAddr,
        /// Address of the admin listener (/metrics, /healthz, /readyz).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901", value_parser = resolve_addr)]
        admin_listen: SocketAddr,
        /// Also serve HTTPS, with a certificate (and a CA to trust it by) generated at start.
        #[arg(long)]
        tls: bool,
        /// Address of the HTTPS listener of --tls.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443", value_parser = resolve_addr)]
        tls_listen: SocketAddr,
    },
    /// Talk to a running gateway's admin API (token from PROTOGATE_ADMIN_TOKEN).
    Admin {
        /// Address of the gateway's admin listener (before or after the subcommand).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901", value_parser = resolve_addr, global = true)]
        admin_addr: SocketAddr,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Validate descriptor sets (or a whole config) and print the routes they would serve.
    Check(CheckArgs),
    /// Mint a signed test token for a gateway that trusts the matching key.
    Token(TokenArgs),
    /// Print the OpenAPI 3.1 document of descriptor sets (or of a whole
    /// config): the one `GET /openapi.json` serves.
    Openapi(OpenapiArgs),
}

#[derive(Debug, Args)]
struct OpenapiArgs {
    /// Descriptor sets, .proto files or archives of them, as for `check`.
    #[arg(required_unless_present = "config")]
    files: Vec<PathBuf>,
    /// Only this package's routes (`acme.orders.v1`).
    #[arg(long)]
    package: Option<String>,
    /// The document of what `serve --config FILE` would serve (its sets,
    /// policies, JSON options and `openapi` settings), plus FILES.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Descriptor sets (.binpb, .pb, .desc, imports included), .proto files
    /// (compiled together into one set, as an upload is), or tar, zip or
    /// gzip archives of .proto files.
    #[arg(required_unless_present_any = ["config", "discover"])]
    files: Vec<PathBuf>,
    /// Read the schema of the gRPC server at URL through its server
    /// reflection, as `serve --discover URL` would; repeatable.
    #[arg(long = "discover", value_name = "URL")]
    discover: Vec<String>,
    /// Check what `serve --config FILE` would start: its sets, upstreams,
    /// policies, keys and filters, plus FILES.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where a package or service is served, as PATTERN=URL; repeatable. With
    /// it (or --config), every service needs an upstream.
    #[arg(long = "upstream", value_name = "PATTERN=URL")]
    upstreams: Vec<String>,
    /// Also expose methods without a google.api.http annotation.
    #[arg(long)]
    expose_unannotated: bool,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// A PEM private key (RSA, EC, Ed25519) or a file holding an HMAC secret.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The `iss` claim: the issuer of the gateway's provider for this key.
    #[arg(long)]
    iss: String,
    /// The `sub` claim.
    #[arg(long)]
    sub: String,
    /// The `roles` claim, comma-separated.
    #[arg(long, value_delimiter = ',')]
    roles: Vec<String>,
    /// The `aud` claim; repeatable.
    #[arg(long)]
    aud: Vec<String>,
    /// Time until `exp`, e.g. 1h, 30m.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The `kid` header, for a JWKS with several keys.
    #[arg(long)]
    kid: Option<String>,
    /// The signing algorithm (RS256, ES384, ...); default: by the key (RS256, ES256, EdDSA, HS256).
    #[arg(long, value_parser = parse_algorithm)]
    alg: Option<jsonwebtoken::Algorithm>,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Register or replace a set: a descriptor set (.binpb/.pb/.desc), a .proto
    /// file, or a .tar/.zip/.tar.gz of .proto files.
    Upload {
        file: PathBuf,
        /// The set's name (letters, digits, `.`, `_`, `-`).
        #[arg(long)]
        name: String,
        /// Serve the packages the set brings from this gRPC server.
        #[arg(long, value_name = "URL")]
        upstream: Option<String>,
    },
    /// List the loaded descriptor sets.
    List,
    /// Print every route with its method and upstream.
    Routes,
    /// Remove a set and its routes.
    Delete { name: String },
    /// The servers read through gRPC server reflection (`discover`).
    Discover {
        #[command(subcommand)]
        command: DiscoverCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DiscoverCommand {
    /// Read every server's schema now and register what changed.
    Refresh,
}

/// Flags override the config file, so a gateway can run from flags alone.
#[derive(Debug, Args)]
struct ServeArgs {
    /// YAML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address of the public listener (default 127.0.0.1:8080; a host name is resolved).
    #[arg(long, value_parser = resolve_addr)]
    listen: Option<SocketAddr>,
    /// Address of the admin listener: /metrics, /healthz, /readyz (default 127.0.0.1:9901).
    #[arg(long, value_name = "ADDR", value_parser = resolve_addr)]
    admin_listen: Option<SocketAddr>,
    /// Threads serving the public listener (default: one per core).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// A descriptor set file to load; repeatable.
    #[arg(long = "descriptor-set", value_name = "FILE")]
    descriptor_sets: Vec<PathBuf>,
    /// Directory whose *.binpb, *.pb and *.desc files are loaded.
    #[arg(long, value_name = "DIR")]
    descriptors: Option<PathBuf>,
    /// Where a package or service is served, as PATTERN=URL; repeatable.
    #[arg(long = "upstream", value_name = "PATTERN=URL")]
    upstreams: Vec<String>,
    /// Serve HTTPS with this PEM certificate chain (replaces `tls.certificates`).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Address of the HTTPS listener (default 127.0.0.1:8443).
    #[arg(long, value_name = "ADDR", value_parser = resolve_addr)]
    tls_listen: Option<SocketAddr>,
    /// The Redis several instances share (`redis.url`): redis://host:port/db or rediss://.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Serve every service (but grpc.*) of the gRPC server at URL, read
    /// through its server reflection; repeatable.
    #[arg(long = "discover", value_name = "URL")]
    discover: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    protogate::observe::init_tracing();
    let result = match cli.command {
        Command::Check(args) => check(&args),
        Command::Token(args) => token(&args),
        Command::Openapi(args) => openapi(&args),
        command => tokio::runtime::Runtime::new()
            .context("cannot start the tokio runtime")
            .and_then(|runtime| runtime.block_on(run(command))),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", report(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause once: many errors already print
/// their source (`cannot read x.yaml: No such file or directory`), and
/// anyhow's `{:#}` would repeat it.
fn report(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            let config = serve_config(args)?;
            let server = Server::new(&config, Vec::new())?;
            let listener = TcpListener::bind(server.listen_addr())
                .await
                .with_context(|| format!("cannot listen on {}", server.listen_addr()))?;
            let admin = TcpListener::bind(server.admin_addr())
                .await
                .with_context(|| format!("cannot listen on {}", server.admin_addr()))?;
            let admin_addr = admin.local_addr()?;
            let mut server = server.with_admin_listener(admin);
            if let Some(addr) = server.tls_addr() {
                let tls = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                tracing::info!(addr = %tls.local_addr()?, "serving HTTPS");
                server = server.with_tls_listener(tls);
            }
            tracing::info!(addr = %listener.local_addr()?, admin = %admin_addr, routes = server.registry().load().routes().len(), "serving");
            server.serve(listener, shutdown_signal()).await?;
        }
        Command::Demo {
            listen,
            admin_listen,
            tls,
            tls_listen,
        } => {
            let token = std::env::var(ADMIN_TOKEN_ENV).ok().map(AdminToken);
            let tls_listen = tls.then_some(tls_listen);
            protogate::demo::run(listen, admin_listen, tls_listen, token, shutdown_signal())
                .await?;
        }
        Command::Admin {
            admin_addr,
            command,
        } => return admin(admin_addr, command).await,
        Command::Check(_) | Command::Token(_) | Command::Openapi(_) => {
            unreachable!("run without a runtime")
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn admin(addr: SocketAddr, command: AdminCommand) -> anyhow::Result<ExitCode> {
    let client = AdminClient::new(addr, std::env::var(ADMIN_TOKEN_ENV).ok());
    let result = match command {
        AdminCommand::Upload {
            file,
            name,
            upstream,
        } => client
            .upload(&file, &name, upstream.as_deref())
            .await
            .map(|set| {
                let verb = if set["changed"] == true {
                    "loaded"
                } else {
                    "unchanged"
                };
                println!(
                    "{verb} `{}` ({}, {} routes), generation {}",
                    set["name"].as_str().unwrap_or_default(),
                    set["digest"].as_str().unwrap_or_default(),
                    set["routeCount"],
                    set["generation"]
                );
            }),
        AdminCommand::List => client.list().await.map(|list| {
            for set in list["descriptorSets"].as_array().into_iter().flatten() {
                println!(
                    "{}  {}  {} routes  loaded {}{}",
                    set["name"].as_str().unwrap_or_default(),
                    set["digest"].as_str().unwrap_or_default(),
                    set["routeCount"],
                    set["loadedAt"].as_str().unwrap_or_default(),
                    if set["managed"] == true {
                        ""
                    } else {
                        "  (config)"
                    },
                );
            }
        }),
        AdminCommand::Routes => client.routes().await.map(|routes| {
            for route in routes["routes"].as_array().into_iter().flatten() {
                println!(
                    "{}  -> {}  @ {}  [{}]",
                    route["route"].as_str().unwrap_or_default(),
                    route["rpc"].as_str().unwrap_or_default(),
                    route["upstream"]["url"].as_str().unwrap_or("-"),
                    access(&route["policy"]),
                );
            }
        }),
        AdminCommand::Delete { name } => client.delete(&name).await.map(|deleted| {
            println!("deleted `{name}`, generation {}", deleted["generation"]);
        }),
        AdminCommand::Discover {
            command: DiscoverCommand::Refresh,
        } => client.refresh_discovery().await.map(|refreshed| {
            for source in refreshed["sources"].as_array().into_iter().flatten() {
                println!(
                    "{}  {}  {}  {}",
                    source["url"].as_str().unwrap_or_default(),
                    source["set"].as_str().unwrap_or_default(),
                    source["digest"].as_str().unwrap_or_default(),
                    if source["changed"] == true {
                        "changed"
                    } else {
                        "unchanged"
                    },
                );
            }
            println!("generation {}", refreshed["generation"]);
        }),
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(err) => {
            eprintln!("error: {err}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Who may call a route, from its `policy` in the admin API's listing.
fn access(policy: &serde_json::Value) -> String {
    if policy["auth"] == "off" {
        return "auth off: anyone".to_owned();
    }
    let names = |key: &str| {
        let names: Vec<&str> = policy[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|name| name.as_str())
            .collect();
        names.join(",")
    };
    let mut access = if policy["allowAnonymous"] == true {
        "anonymous allowed".to_owned()
    } else {
        "token".to_owned()
    };
    for (key, label) in [("roles", "a role of"), ("scopes", "scopes")] {
        let names = names(key);
        if !names.is_empty() {
            access.push_str(&format!("; {label} {names}"));
        }
    }
    access
}

fn serve_config(args: ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(admin_listen) = args.admin_listen {
        config.admin.listen = admin_listen;
    }
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    if let Some(dir) = args.descriptors {
        config.descriptors.dir = Some(dir);
    }
    config.descriptors.files.extend(args.descriptor_sets);
    if let Ok(token) = std::env::var(ADMIN_TOKEN_ENV) {
        config.admin.token = Some(AdminToken(token));
    }
    for spec in &args.upstreams {
        config.override_upstream(spec)?;
    }
    if let (Some(cert_file), Some(key_file)) = (args.tls_cert, args.tls_key) {
        let certificate = CertificateConfig {
            cert_file,
            key_file,
        };
        match &mut config.tls {
            Some(tls) => tls.certificates = vec![certificate],
            None => config.tls = Some(TlsConfig::new(vec![certificate])),
        }
    }
    if let Some(addr) = args.tls_listen {
        match &mut config.tls {
            Some(tls) => tls.listen = addr,
            None => {
                anyhow::bail!("--tls-listen needs --tls-cert and --tls-key, or `tls` in the config")
            }
        }
    }
    if let Some(url) = &args.redis {
        config.override_redis_url(url);
    }
    for url in &args.discover {
        config.override_discover(url);
    }
    config.validate()?;
    Ok(config)
}

fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => Some(Config::from_file(path)?),
        None if args.upstreams.is_empty() && args.discover.is_empty() => None,
        None => Some(Config::default()),
    };
    if let Some(config) = &mut config {
        for spec in &args.upstreams {
            config.override_upstream(spec)?;
        }
        for url in &args.discover {
            config.override_discover(url);
        }
        config.validate()?;
        // As `serve` reads it: an admin listener off loopback needs it.
        if let Ok(token) = std::env::var(ADMIN_TOKEN_ENV) {
            config.admin.token = Some(AdminToken(token));
        }
        config.descriptors.expose_unannotated |= args.expose_unannotated;
    }
    match catalog(&args.files, config.as_ref(), args.expose_unannotated)? {
        Ok(catalog) => {
            print!("{}", RouteTable(&catalog));
            for set in catalog.sets() {
                let decoded = prost_types::FileDescriptorSet::decode(set.bytes.clone());
                if decoded.is_ok_and(|decoded| !openapi::set_has_comments(&decoded)) {
                    eprintln!(
                        "warning: set `{}` carries no comments: its OpenAPI operations and schemas have no descriptions (build it with source info, e.g. `protoc --include_source_info`)",
                        set.name
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("{err}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The catalog `files` build: without a config, the sets alone (upstreams
/// are not required); with one, all that `serve` would start (warnings on
/// stderr), nothing bound. `Err` inside: the problems found, worded.
fn catalog(
    files: &[PathBuf],
    config: Option<&Config>,
    expose_unannotated: bool,
) -> anyhow::Result<Result<Arc<Catalog>, String>> {
    let sets = read_sets(files)?;
    let Some(config) = config else {
        return Ok(protogate::check(sets, expose_unannotated)
            .map(Arc::new)
            .map_err(|err| err.to_string()));
    };
    // Upstream channels and key refreshers need a runtime to exist in;
    // a current-thread one never runs them, so nothing is contacted.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let _entered = runtime.enter();
    let catalog = if config.discover.is_empty() {
        protogate::check_config(config, sets)
    } else {
        // The servers' reflection is called; upstreams still are not (their
        // channels connect on first use), key refreshers may run meanwhile.
        runtime.block_on(protogate::check_discovery(config, sets))
    };
    Ok(catalog.map_err(|err| err.to_string()))
}

/// The document `GET /openapi.json` would serve, on stdout.
fn openapi(args: &OpenapiArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.as_deref().map(Config::from_file).transpose()?;
    let catalog = match catalog(&args.files, config.as_ref(), false)? {
        Ok(catalog) => catalog,
        Err(err) => {
            eprintln!("{err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(package) = &args.package {
        let served = openapi::packages(&catalog);
        if !served.contains(package) {
            eprintln!(
                "error: no served package `{package}` (served: {})",
                served.join(", ")
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    let config = config.unwrap_or_default();
    let options =
        openapi::DocumentOptions::new(&config.openapi, &config.json, config.auth.is_some());
    let document = openapi::document(&catalog, &options, args.package.as_deref());
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &document)?;
    writeln!(out)?;
    Ok(ExitCode::SUCCESS)
}

/// The sets named on the command line: a file's bytes tell a descriptor set
/// from an archive of `.proto` files, as in an upload; `.proto` files are
/// compiled together into one set, named after the first.
fn read_sets(files: &[PathBuf]) -> anyhow::Result<Vec<DescriptorSet>> {
    let (protos, others): (Vec<&PathBuf>, Vec<&PathBuf>) = files
        .iter()
        .partition(|path| path.extension().is_some_and(|ext| ext == "proto"));
    let mut sets = Vec::with_capacity(others.len() + 1);
    for path in others {
        let set = DescriptorSet::from_file(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let bytes = UploadFormat::sniff(&set.bytes)
            .descriptor_set(set.bytes, usize::MAX)
            .with_context(|| path.display().to_string())?;
        sets.push(DescriptorSet { bytes, ..set });
    }
    if let Some(first) = protos.first() {
        let mut sources = ProtoSources::new(usize::MAX);
        for path in &protos {
            let source =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            sources.insert(&file_name(path), source)?;
        }
        let name = first.file_stem().unwrap_or_default();
        sets.push(DescriptorSet {
            name: name.to_string_lossy().into_owned(),
            bytes: sources.compile()?,
        });
    }
    Ok(sets)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

fn token(args: &TokenArgs) -> anyhow::Result<ExitCode> {
    let key = SigningKey::from_file(&args.key, args.alg)?;
    let claims = Claims {
        issuer: args.iss.clone(),
        subject: args.sub.clone(),
        audiences: args.aud.clone(),
        roles: args.roles.clone(),
        lifetime: args.ttl,
        extra: serde_json::Map::new(),
    };
    println!("{}", key.sign(&claims, args.kid.as_deref())?);
    Ok(ExitCode::SUCCESS)
}

fn parse_algorithm(name: &str) -> Result<jsonwebtoken::Algorithm, String> {
    name.parse().map_err(|_| {
        format!("`{name}` is not a JWT signing algorithm (RS256, ES256, EdDSA, HS256, ...)")
    })
}

async fn shutdown_signal() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
    tracing::info!("shutting down");
}
