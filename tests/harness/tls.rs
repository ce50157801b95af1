//! Postgres over TLS for the tests: a test CA (rcgen), a server certificate for `localhost`
//! signed by it, a second CA that signed nothing, and two servers of the test binary's own on
//! 127.0.0.1: one with `ssl=on` that takes TLS connections only (`hostssl` in pg_hba.conf), and
//! one without TLS at all.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cairn_operator::localdb::LocalPostgres;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

pub struct TlsServers {
    /// Takes TLS connections only; its certificate names `localhost` (not 127.0.0.1).
    pub tls_port: u16,
    /// Takes plaintext connections only.
    pub plain_port: u16,
    /// The CA that signed the TLS server's certificate.
    pub ca: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
}

impl TlsServers {
    /// A URL of the TLS server's database `database` (`cairn` exists), with `query`.
    pub fn tls_url(&self, host: &str, database: &str, query: &str) -> String {
        format!(
            "postgres://cairn@{host}:{}/{database}?{query}",
            self.tls_port
        )
    }

    pub fn plain_url(&self, database: &str, query: &str) -> String {
        format!(
            "postgres://cairn@localhost:{}/{database}?{query}",
            self.plain_port
        )
    }
}

static SERVERS: OnceLock<TlsServers> = OnceLock::new();

/// The test binary's two servers, started on first use (stopped and removed when it exits).
pub fn servers() -> &'static TlsServers {
    SERVERS.get_or_init(|| {
        let pid = std::process::id();
        let [tls_root, plain_root] = ["tls", "plain"].map(|kind| {
            let root = std::env::temp_dir().join(format!("cairn-{kind}-tests-{pid}"));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).expect("test directory");
            crate::reap_when_done(&root);
            root
        });
        let (ca, other_ca) = (tls_root.join("ca.pem"), tls_root.join("other-ca.pem"));
        let tls = start(&tls_root, Some((&ca, &other_ca)));
        let plain = start(&plain_root, None);
        TlsServers {
            tls_port: tls,
            plain_port: plain,
            ca,
            other_ca,
        }
    })
}

/// Starts a server under `root` listening on a free port of 127.0.0.1; with `certificates`,
/// TLS only, writing the CA (and an unrelated CA) there. Returns the port.
fn start(root: &Path, certificates: Option<(&Path, &Path)>) -> u16 {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    // First start: initdb, and the socket-only defaults.
    let pg = LocalPostgres::new(root, port).expect("the TLS test Postgres");
    pg.ensure_running()
        .expect("cannot start the TLS test Postgres");
    pg.stop().expect("cannot stop the TLS test Postgres");
    let mut options = "-c listen_addresses=127.0.0.1".to_owned();
    if let Some((ca, other_ca)) = certificates {
        let data = pg.data_dir();
        let (cert, key) = (data.join("server.crt"), data.join("server.key"));
        write_certificates(ca, other_ca, &cert, &key);
        for file in [&cert, &key] {
            pg.give_to_server(file).expect("chown");
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .expect("pg_hba.conf");
        options += &format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            cert.display(),
            key.display()
        );
    }
    pg.with_server_options(&options)
        .ensure_running()
        .expect("cannot start the TLS test Postgres");
    port
}

fn write_certificates(ca_file: &Path, other_ca_file: &Path, cert_file: &Path, key_file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let ca = certificate_authority("Cairn test CA");
    let other = certificate_authority("Cairn unrelated CA");
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).expect("server certificate");
    std::fs::write(ca_file, ca.pem()).expect("CA file");
    std::fs::write(other_ca_file, other.pem()).expect("CA file");
    std::fs::write(cert_file, cert.pem()).expect("certificate file");
    std::fs::write(key_file, key.serialize_pem()).expect("key file");
    // Postgres refuses a key others may read.
    std::fs::set_permissions(key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

/// A serving certificate for `dns_name` from a fresh CA, written to `dir` as tls.crt and
/// tls.key; returns the CA's PEM (what an APIService's caBundle holds).
pub fn serving_certificate(dir: &Path, dns_name: &str) -> String {
    let ca = certificate_authority("Cairn test serving CA");
    let key = KeyPair::generate().expect("serving key");
    let mut params = CertificateParams::new(vec![dns_name.to_owned()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, dns_name);
    let cert = params.signed_by(&key, &ca).expect("serving certificate");
    std::fs::create_dir_all(dir).expect("certificate dir");
    std::fs::write(dir.join("tls.crt"), cert.pem()).expect("certificate file");
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("key file");
    ca.pem()
}
