//! A small HTTP/1.1 server on loopback for PlayAudio tests: serves files and misbehaves on
//! request (error statuses, stalls, short bodies, redirect loops, slow drips), and counts the
//! connections it has open so a test can see a download really stop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What the server does for a path (the query string is ignored when routing).
#[derive(Clone, Debug)]
pub enum Route {
    /// 200 with the body and Content-Type, Content-Length set.
    File { body: Vec<u8>, content_type: String },
    /// 200, the body sent in `chunk`-byte pieces `every` apart (Content-Length set).
    Drip {
        body: Vec<u8>,
        content_type: String,
        chunk: usize,
        every: Duration,
    },
    /// 200 with chunked transfer encoding and no length.
    Chunked { body: Vec<u8>, content_type: String },
    /// Headers declaring the full length, `send` bytes, then silence with the connection open.
    Stall { body: Vec<u8>, send: usize },
    /// Headers declaring `declared` bytes, the body, then the connection closes.
    Short { body: Vec<u8>, declared: usize },
    /// An error status with an HTML body.
    Status(u16),
    /// 302 to `location`.
    Redirect(String),
}

#[derive(Default)]
struct Shared {
    routes: Mutex<HashMap<String, Route>>,
    open: AtomicUsize,
    requests: AtomicUsize,
}

pub struct HttpServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    scheme: &'static str,
}

struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl HttpServer {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// HTTPS with the certificate chain and key in these PEM files.
    pub async fn start_tls(cert_pem: &std::path::Path, key_pem: &std::path::Path) -> Self {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
            .expect("cert file")
            .collect::<Result<_, _>>()
            .expect("certs");
        let key = PrivateKeyDer::from_pem_file(key_pem).expect("key");
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server certificate");
        Self::start_with(Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let _ = conn.set_nodelay(true);
                s.open.fetch_add(1, Ordering::SeqCst);
                let guard = Open(s.clone());
                let (s, tls) = (s.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(conn, s, guard).await,
                        Some(tls) => {
                            if let Ok(conn) = tls.accept(conn).await {
                                serve(conn, s, guard).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            shared,
            scheme,
        }
    }

    pub fn route(&self, path: &str, route: Route) {
        self.shared
            .routes
            .lock()
            .expect("routes")
            .insert(path.to_string(), route);
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}://{}{path_and_query}", self.scheme, self.addr)
    }

    /// Connections the server still has open.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

async fn serve(mut conn: impl AsyncRead + AsyncWrite + Unpin, shared: Arc<Shared>, _open: Open) {
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match conn.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let text = String::from_utf8_lossy(&head);
        let target = text.split_whitespace().nth(1).unwrap_or("/");
        let path = target.split('?').next().unwrap_or("/").to_string();
        let route = shared.routes.lock().expect("routes").get(&path).cloned();
        let keep_going = respond(&mut conn, route).await;
        if !keep_going {
            return;
        }
    }
}

fn headers(status: &str, content_type: &str, length: Option<usize>) -> Vec<u8> {
    let mut h = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n");
    match length {
        Some(n) => h.push_str(&format!("Content-Length: {n}\r\n")),
        None => h.push_str("Transfer-Encoding: chunked\r\n"),
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// Writes one response; false when the connection must close afterwards.
async fn respond(conn: &mut (impl AsyncRead + AsyncWrite + Unpin), route: Option<Route>) -> bool {
    let result: std::io::Result<bool> = async {
        match route {
            None | Some(Route::Status(_)) => {
                let code = match route {
                    Some(Route::Status(c)) => c,
                    _ => 404,
                };
                let body = format!("<html><body><h1>{code}</h1></body></html>");
                let status = format!("{code} Error");
                conn.write_all(&headers(&status, "text/html", Some(body.len())))
                    .await?;
                conn.write_all(body.as_bytes()).await?;
                Ok(true)
            }
            Some(Route::File { body, content_type }) => {
                conn.write_all(&headers("200 OK", &content_type, Some(body.len())))
                    .await?;
                conn.write_all(&body).await?;
                Ok(true)
            }
            Some(Route::Drip {
                body,
                content_type,
                chunk,
                every,
            }) => {
                conn.write_all(&headers("200 OK", &content_type, Some(body.len())))
                    .await?;
                for piece in body.chunks(chunk.max(1)) {
                    conn.write_all(piece).await?;
                    tokio::time::sleep(every).await;
                }
                Ok(true)
            }
            Some(Route::Chunked { body, content_type }) => {
                conn.write_all(&headers("200 OK", &content_type, None))
                    .await?;
                for piece in body.chunks(16 * 1024) {
                    conn.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                        .await?;
                    conn.write_all(piece).await?;
                    conn.write_all(b"\r\n").await?;
                }
                conn.write_all(b"0\r\n\r\n").await?;
                Ok(true)
            }
            Some(Route::Stall { body, send }) => {
                conn.write_all(&headers("200 OK", "audio/wav", Some(body.len())))
                    .await?;
                conn.write_all(&body[..send.min(body.len())]).await?;
                // Hold the connection open and say nothing until the client gives up.
                let mut sink = [0u8; 64];
                while conn.read(&mut sink).await? > 0 {}
                Ok(false)
            }
            Some(Route::Short { body, declared }) => {
                conn.write_all(&headers("200 OK", "audio/mpeg", Some(declared)))
                    .await?;
                conn.write_all(&body).await?;
                Ok(false)
            }
            Some(Route::Redirect(location)) => {
                let h = format!(
                    "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
                );
                conn.write_all(h.as_bytes()).await?;
                Ok(true)
            }
        }
    }
    .await;
    result.unwrap_or(false)
}
