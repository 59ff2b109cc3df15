//! Optional bearer-token authentication (`BRIDGE_AUTH_TOKEN`) for every RPC the bridge serves:
//! the contract's, `grpc.health.v1` and reflection alike. Anyone who can reach the port
//! otherwise controls every user's room, and health and reflection tell a stranger what runs
//! here; the operators' probes are on the separate HTTP listener, which Kubernetes reaches
//! without a token.
//!
//! A request without `authorization: Bearer <token>`, or with another token, is answered
//! UNAUTHENTICATED before it reaches any service. Tokens are compared as SHA-256 digests,
//! byte by byte without an early exit, so the time taken says nothing about how much of a
//! guess was right (nor, through the digest, about the token's length).

use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

/// The expected token's digest.
#[derive(Clone)]
pub struct RequireToken {
    digest: Arc<[u8; 32]>,
}

impl RequireToken {
    pub fn new(token: &str) -> Self {
        Self {
            digest: Arc::new(Sha256::digest(token.as_bytes()).into()),
        }
    }

    /// Why `authorization` (the header's value, if any) is refused, or None if it is right.
    pub fn refusal(&self, authorization: Option<&[u8]>) -> Option<&'static str> {
        let Some(value) = authorization else {
            return Some("missing authorization metadata: send 'authorization: Bearer <token>'");
        };
        let Some(token) = value.strip_prefix(b"Bearer ") else {
            return Some("authorization must be 'Bearer <token>'");
        };
        let given: [u8; 32] = Sha256::digest(token).into();
        let differ = given
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (differ != 0).then_some("wrong token")
    }
}

impl<S> Layer<S> for RequireToken {
    type Service = Authenticated<S>;
    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            token: self.clone(),
        }
    }
}

/// A service that answers UNAUTHENTICATED unless the request carries the token.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    token: RequireToken,
}

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<http::Response<Body>, S::Error>>,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        match self.token.refusal(header) {
            None => futures_util::future::Either::Right(self.inner.call(request)),
            Some(why) => {
                tracing::debug!(path = %request.uri().path(), why, "refused an unauthenticated request");
                let status = Status::unauthenticated(format!(
                    "{why} (this bridge requires BRIDGE_AUTH_TOKEN)"
                ));
                futures_util::future::Either::Left(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let t = RequireToken::new("s3cret");
        assert_eq!(t.refusal(Some(b"Bearer s3cret")), None);
        assert_eq!(t.refusal(Some(b"Bearer s3cre")), Some("wrong token"));
        assert_eq!(t.refusal(Some(b"Bearer s3cret ")), Some("wrong token"));
        assert!(t.refusal(Some(b"bearer s3cret")).is_some());
        assert!(t.refusal(Some(b"s3cret")).is_some());
        assert!(t.refusal(None).is_some_and(|w| w.contains("missing")));
    }
}
