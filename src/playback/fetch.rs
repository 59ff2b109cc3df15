//! Fetching a playback's URL: one shared HTTP client (rustls, no system OpenSSL), streamed into
//! a bounded channel so decoding starts with the first bytes.

use std::error::Error as _;
use std::sync::Arc;

use bytes::Bytes;
use reqwest::{Client, Response, Url, header};
use tokio::sync::mpsc;

use super::egress::{PolicyResolver, Refused};
use super::{Gauge, PlaybackError, PlaybackSettings, PlaybackStats};

/// Body chunks in flight between the fetch task and the decoder.
const BODY_QUEUE: usize = 8;

/// The fetch task's end of the body channel: chunks, then at most one error.
pub type BodySender = mpsc::Sender<Result<Bytes, PlaybackError>>;
/// The decoder's end of the body channel.
pub type BodyReceiver = mpsc::Receiver<Result<Bytes, PlaybackError>>;

/// `url` as it may be shown in logs and errors: any user name and password replaced by `***`.
pub fn redacted(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    let _ = shown.set_username("***");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// A response whose headers have arrived and whose body is still to come.
pub struct Download {
    response: Response,
    /// The media type the server declared, without parameters.
    pub content_type: Option<String>,
    /// The extension of the final URL's path (query and fragment ignored).
    pub extension: Option<String>,
    /// The declared body length.
    pub length: Option<u64>,
    /// The response's status (a success).
    pub status: u16,
    pub url: Url,
}

/// Why the HTTP client cannot be built from the settings.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("PLAYBACK_CA_FILE {}: {why}", path.display())]
    CaFile {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("PLAYBACK_PROXY {0}: {1}")]
    Proxy(String, reqwest::Error),
    #[error("cannot build the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// The process's HTTP client for playbacks.
pub struct Fetcher {
    client: Client,
    settings: PlaybackSettings,
}

impl Fetcher {
    pub fn new(settings: PlaybackSettings) -> Result<Self, ClientError> {
        let mut builder = Client::builder();
        if let Some(path) = &settings.ca_file {
            let bad = |why: &dyn std::fmt::Display| ClientError::CaFile {
                path: path.clone(),
                why: why.to_string(),
            };
            let pem = std::fs::read(path).map_err(|e| bad(&e))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(&e))?;
            if roots.is_empty() {
                return Err(bad(&"no PEM certificate in it"));
            }
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        // Every hop is checked: names by the resolver, IP literals by the redirect policy.
        let policy = Arc::new(settings.egress.clone());
        let (hops, max_redirects) = (policy.clone(), settings.max_redirects);
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                return attempt.error(TooManyRedirects);
            }
            match hops.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        let mut resolver = PolicyResolver::new(policy);
        // `no_proxy` below turns off the environment's proxies (HTTP_PROXY and the like): the
        // bridge's egress goes where its own settings say, and nowhere else.
        builder = builder.no_proxy();
        if let Some(proxy) = &settings.proxy {
            let shown = redacted(proxy);
            let all =
                reqwest::Proxy::all(proxy.clone()).map_err(|e| ClientError::Proxy(shown, e))?;
            builder = builder.proxy(all);
            if let Some(host) = proxy.host_str() {
                resolver = resolver.exempting_proxy(host);
            }
        }
        let client = builder
            .dns_resolver(Arc::new(resolver))
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            .redirect(redirects)
            .user_agent(concat!("livekit-bridge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, settings })
    }

    /// Sends the request and waits for the response headers. Error statuses and bodies
    /// declared larger than the limit fail here, before any audio is read.
    pub async fn open(&self, url: &Url) -> Result<Download, PlaybackError> {
        self.settings
            .egress
            .check_url(url)
            .map_err(|refused| PlaybackError::Fetch(refused.to_string()))?;
        let timeout = self.settings.read_timeout + self.settings.connect_timeout;
        let sent = tokio::time::timeout(timeout, self.client.get(url.clone()).send()).await;
        let response = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(self.classify(&e, url, 0)),
            Err(_) => {
                return Err(PlaybackError::Timeout(format!(
                    "no response from {} within {timeout:?}",
                    host(url)
                )));
            }
        };
        let status = response.status();
        if !status.is_success() {
            return Err(PlaybackError::HttpStatus {
                status: status.as_u16(),
                url: redacted(response.url()),
            });
        }
        let length = response.content_length();
        if let Some(n) = length.filter(|&n| n > self.settings.max_bytes) {
            return Err(self.too_large(n));
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty());
        let final_url = response.url().clone();
        let extension = final_url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .and_then(|name| name.rsplit_once('.'))
            .map(|(_, ext)| ext.to_ascii_lowercase())
            .filter(|ext| !ext.is_empty() && ext.len() <= 5);
        Ok(Download {
            status: status.as_u16(),
            response,
            content_type,
            extension,
            length,
            url: final_url,
        })
    }

    fn classify(&self, e: &reqwest::Error, url: &Url, received: u64) -> PlaybackError {
        classify(e, url, received, self.settings.proxy.as_ref())
    }

    fn too_large(&self, n: u64) -> PlaybackError {
        PlaybackError::TooLarge(format!(
            "the audio is {n} bytes, over the limit of {} bytes (PLAYBACK_MAX_BYTES)",
            self.settings.max_bytes
        ))
    }

    /// Streams the body into `tx` until it ends, fails, passes the size limit, or the receiver
    /// is gone. Errors are sent as the last item.
    pub async fn pump(&self, download: Download, tx: BodySender, stats: Arc<PlaybackStats>) {
        let _running = Gauge::new(&stats, |s| &s.fetchers);
        let Download {
            mut response,
            url,
            length,
            ..
        } = download;
        let mut received = 0u64;
        loop {
            let item = match response.chunk().await {
                Ok(Some(chunk)) => {
                    received += chunk.len() as u64;
                    stats
                        .bytes_fetched
                        .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    if received > self.settings.max_bytes {
                        Err(self.too_large(received))
                    } else {
                        Ok(chunk)
                    }
                }
                Ok(None) => return,
                Err(e) => Err(match length {
                    Some(total) if !e.is_timeout() => PlaybackError::Fetch(format!(
                        "the download from {} broke off after {received} of {total} bytes: {}",
                        host(&url),
                        root_cause(&e)
                    )),
                    _ => self.classify(&e, &url, received),
                }),
            };
            let last = item.is_err();
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    }
}

/// Body chunks from the fetch task, for the decoder.
pub fn body_channel() -> (BodySender, BodyReceiver) {
    mpsc::channel(BODY_QUEUE)
}

/// `host:port` of `url`, for messages.
pub fn host(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => redacted(url),
    }
}

fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The redirect policy's own limit (PLAYBACK_MAX_REDIRECTS).
#[derive(Debug, thiserror::Error)]
#[error("too many redirects")]
struct TooManyRedirects;

fn classify(e: &reqwest::Error, url: &Url, received: u64, proxy: Option<&Url>) -> PlaybackError {
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cause {
        if let Some(refused) = c.downcast_ref::<Refused>() {
            return PlaybackError::Fetch(refused.to_string());
        }
        cause = c.source();
    }
    // Through a proxy every connection is to the proxy: a connect failure is the proxy's
    // (unreachable, or it would not open the tunnel), and the message says which.
    if let Some(proxy) = proxy.filter(|_| e.is_connect() && !e.is_timeout()) {
        let why = root_cause(e);
        let proxy = host(proxy);
        return PlaybackError::Fetch(if why.starts_with("tunnel error") {
            format!(
                "the proxy would not open a tunnel to {} (PLAYBACK_PROXY {proxy}): {why}; check \
                 the credentials in PLAYBACK_PROXY and the proxy's access list",
                host(url)
            )
        } else {
            format!("cannot reach the proxy (PLAYBACK_PROXY {proxy}): {why}")
        });
    }
    if e.is_timeout() {
        return PlaybackError::Timeout(if received == 0 {
            format!("{} did not answer in time ({})", host(url), root_cause(e))
        } else {
            format!(
                "{} stopped sending after {received} bytes ({})",
                host(url),
                root_cause(e)
            )
        });
    }
    if e.is_redirect() {
        return PlaybackError::Fetch(format!(
            "too many redirects fetching {} (a redirect loop?)",
            redacted(url)
        ));
    }
    if e.is_connect() {
        return PlaybackError::Fetch(format!(
            "cannot connect to {}: {}",
            host(url),
            root_cause(e)
        ));
    }
    let detail = match e.source() {
        Some(_) => root_cause(e),
        None => e.to_string(),
    };
    PlaybackError::Fetch(format!("fetching {} failed: {detail}", redacted(url)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show() {
        let url = Url::parse("http://user:hunter2@h:81/a.mp3?x=1").expect("valid");
        assert_eq!(redacted(&url), "http://***@h:81/a.mp3?x=1");
        let plain = Url::parse("https://h/a.mp3").expect("valid");
        assert_eq!(redacted(&plain), "https://h/a.mp3");
    }
}
