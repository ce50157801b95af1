//! The read API's listener. TLS with a client certificate required: only the API server's front
//! proxy gets a connection (a certificate of the CA and with a name that ConfigMap
//! kube-system/extension-apiserver-authentication gives), so the user headers on its requests
//! can be trusted. Anyone else, a pod dialling the port or a user through the service proxy, is
//! refused at the handshake, before any request is read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::auth::IdentityHeaders;

/// Where the API server publishes how it authenticates itself to aggregated API servers.
pub const AUTHENTICATION_CONFIG_MAP: &str = "extension-apiserver-authentication";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to recognise the API server's front proxy, and where it puts the user.
#[derive(Debug, Clone)]
pub struct FrontProxy {
    client_cas: Vec<CertificateDer<'static>>,
    /// Accepted certificate common names; empty: any certificate of the CA.
    allowed_names: Vec<String>,
    pub headers: IdentityHeaders,
}

impl FrontProxy {
    pub async fn load(client: &Client) -> anyhow::Result<FrontProxy> {
        let config = Api::<ConfigMap>::namespaced(client.clone(), "kube-system")
            .get(AUTHENTICATION_CONFIG_MAP)
            .await
            .with_context(|| {
                format!(
                    "cannot read ConfigMap kube-system/{AUTHENTICATION_CONFIG_MAP} (the operator needs the \
                     Role extension-apiserver-authentication-reader there)"
                )
            })?;
        FrontProxy::from_data(&config.data.unwrap_or_default())
    }

    /// From that ConfigMap's data (values as the API server writes them: PEM, JSON lists).
    pub fn from_data(data: &BTreeMap<String, String>) -> anyhow::Result<FrontProxy> {
        let pem = data
            .get("requestheader-client-ca-file")
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| {
                anyhow!(
                    "the API server has no front proxy (kube-apiserver --requestheader-client-ca-file is not set), \
                     so it cannot forward users to the read API"
                )
            })?;
        let client_cas = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("requestheader-client-ca-file holds no valid PEM certificate")?;
        if client_cas.is_empty() {
            bail!("requestheader-client-ca-file holds no certificate");
        }
        let list = |key: &str| -> anyhow::Result<Option<Vec<String>>> {
            data.get(key)
                .map(|v| {
                    serde_json::from_str(v)
                        .with_context(|| format!("{key} is not a JSON list of strings: {v}"))
                })
                .transpose()
        };
        let defaults = IdentityHeaders::default();
        Ok(FrontProxy {
            client_cas,
            allowed_names: list("requestheader-allowed-names")?.unwrap_or_default(),
            headers: IdentityHeaders {
                user: list("requestheader-username-headers")?.unwrap_or(defaults.user),
                groups: list("requestheader-group-headers")?.unwrap_or(defaults.groups),
                extra_prefixes: list("requestheader-extra-headers-prefix")?
                    .unwrap_or(defaults.extra_prefixes),
            },
        })
    }

    fn tls_config(&self, cert: &Path, key: &Path) -> anyhow::Result<ServerConfig> {
        let mut roots = RootCertStore::empty();
        for ca in &self.client_cas {
            roots
                .add(ca.clone())
                .context("a front-proxy CA certificate")?;
        }
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading the serving certificate {}", cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading the serving key {}", key.display()))?;
        let mut config = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .context("the serving certificate and key do not go together")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Whether the verified certificate chain's leaf has an accepted name.
    fn accepts(&self, chain: Option<&[CertificateDer<'_>]>) -> Result<(), String> {
        if self.allowed_names.is_empty() {
            return Ok(());
        }
        let leaf = chain
            .and_then(|c| c.first())
            .ok_or("no client certificate")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| format!("unreadable client certificate: {e}"))?;
        let name = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        if self.allowed_names.contains(&name) {
            Ok(())
        } else {
            Err(format!(
                "client certificate name {name:?} is not one of requestheader-allowed-names {:?}",
                self.allowed_names
            ))
        }
    }
}

/// Serves `app` on `listener` to the front proxy only.
pub async fn serve(
    listener: TcpListener,
    cert: PathBuf,
    key: PathBuf,
    proxy: FrontProxy,
    app: Router,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(proxy.tls_config(&cert, &key)?));
    let proxy = Arc::new(proxy);
    let listen = listener.local_addr()?;
    tracing::info!(%listen, "serving the read API (/apis/api.cairn.dev/v1alpha1) to the API server's front proxy");
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pass, and accept again.
                tracing::warn!(error = %e, "read API: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, proxy, app) = (acceptor.clone(), proxy.clone(), app.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "read API: refused a TLS handshake");
                    return;
                }
                Err(_) => return,
            };
            if let Err(why) = proxy.accepts(stream.get_ref().1.peer_certificates()) {
                tracing::warn!(%peer, "read API: refused a connection: {why}");
                return;
            }
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "read API: connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use axum::routing;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair,
    };
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    /// A certificate of `ca` named `name` for `usage`: (certificate PEM, key PEM).
    fn issue(
        ca: &CertifiedIssuer<'static, KeyPair>,
        name: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        (
            params.signed_by(&key, ca).unwrap().pem(),
            key.serialize_pem(),
        )
    }

    /// GET over TLS with `client` as the client certificate: the response, or `None` when the
    /// server refused the connection.
    async fn get(
        addr: std::net::SocketAddr,
        server_ca: &str,
        client: Option<&(String, String)>,
    ) -> Option<String> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(server_ca.as_bytes()).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from("cairn-operator.test.svc").unwrap();
        let mut tls = connector.connect(name, tcp).await.ok()?;
        let request =
            "GET /who HTTP/1.1\r\nHost: x\r\nX-Remote-User: alice\r\nConnection: close\r\n\r\n";
        tls.write_all(request.as_bytes()).await.ok()?;
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await.ok()?;
        (!answer.is_empty()).then_some(answer)
    }

    #[tokio::test]
    async fn only_the_front_proxys_certificate_gets_a_connection() {
        let dir = std::env::temp_dir().join(format!("cairn-api-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let serving_ca = authority("serving CA");
        let (cert, key) = issue(
            &serving_ca,
            "cairn-operator.test.svc",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();

        let proxy_ca = authority("front-proxy CA");
        let other_ca = authority("cluster CA");
        let data = BTreeMap::from([
            ("requestheader-client-ca-file".to_owned(), proxy_ca.pem()),
            (
                "requestheader-allowed-names".to_owned(),
                r#"["front-proxy-client"]"#.to_owned(),
            ),
        ]);
        let proxy = FrontProxy::from_data(&data).unwrap();
        assert_eq!(proxy.headers, IdentityHeaders::default());
        let app = Router::new().route(
            "/who",
            routing::get(|headers: HeaderMap| async move {
                format!("user={:?}", headers.get("x-remote-user").unwrap())
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            listener,
            dir.join("tls.crt"),
            dir.join("tls.key"),
            proxy,
            app,
        ));
        let client = ExtendedKeyUsagePurpose::ClientAuth;
        let ca = serving_ca.pem();

        let front_proxy = issue(&proxy_ca, "front-proxy-client", client.clone());
        let answer = get(addr, &ca, Some(&front_proxy))
            .await
            .expect("the front proxy gets in");
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains("user=\"alice\""),
            "{answer}"
        );

        assert_eq!(get(addr, &ca, None).await, None, "no certificate");
        let misnamed = issue(&proxy_ca, "someone-else", client.clone());
        assert_eq!(
            get(addr, &ca, Some(&misnamed)).await,
            None,
            "a name not allowed"
        );
        let other = issue(&other_ca, "front-proxy-client", client);
        assert_eq!(
            get(addr, &ca, Some(&other)).await,
            None,
            "another CA's certificate"
        );
        server.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_api_server_without_a_front_proxy_is_a_clear_error() {
        let error = FrontProxy::from_data(&BTreeMap::new()).unwrap_err();
        assert!(
            error.to_string().contains("--requestheader-client-ca-file"),
            "{error}"
        );
        let data = BTreeMap::from([
            (
                "requestheader-client-ca-file".to_owned(),
                authority("ca").pem(),
            ),
            (
                "requestheader-allowed-names".to_owned(),
                "front-proxy-client".to_owned(),
            ),
        ]);
        let error = FrontProxy::from_data(&data).unwrap_err();
        assert!(error.to_string().contains("not a JSON list"), "{error}");
    }
}
