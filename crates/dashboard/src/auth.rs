//! Access control for the command routes.
//!
//! Commands (kill, checkpoint, scale out or in) change a running job, so when the
//! cluster has a token they must carry it as `Authorization: Bearer TOKEN`:
//! the same shared secret workers present to join. The read-only routes
//! stay open, so a dashboard page or a Prometheus scraper needs nothing.
//!
//! A header rather than a cookie also keeps other web pages out: a browser
//! only sends a custom header cross-origin after a CORS preflight, which
//! this server never approves, so a page on another site cannot forge a
//! command to a dashboard on the user's loopback.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::routes::AppState;

/// Why a command was refused before it was looked at.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// No `Authorization` header at all.
    #[error(
        "control commands need the cluster token: pass --token TOKEN or set SPATE_TOKEN \
         (spate kill, checkpoint, scale), or send the header `Authorization: Bearer TOKEN`; \
         a local run prints its token when it starts"
    )]
    Missing,
    /// A header that is not `Bearer TOKEN`.
    #[error(
        "the Authorization header must be `Bearer TOKEN` with the cluster token \
         (pass --token TOKEN or set SPATE_TOKEN)"
    )]
    Malformed,
    /// A token that is not the cluster's.
    #[error(
        "the token is not this cluster's: use the one the run printed when it started \
         (--token TOKEN or SPATE_TOKEN)"
    )]
    Wrong,
}

impl AuthError {
    fn status(&self) -> StatusCode {
        match self {
            AuthError::Missing | AuthError::Malformed => StatusCode::UNAUTHORIZED,
            AuthError::Wrong => StatusCode::FORBIDDEN,
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(json!({ "error": self.to_string() }));
        if status == StatusCode::UNAUTHORIZED {
            // RFC 9110: a 401 names the scheme that would be accepted.
            (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}

/// Middleware for the command routes: passes the request on when the
/// cluster has no token or the request carries it, and answers 401 or 403
/// otherwise, before the command is parsed or queued.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match check(request.headers(), state.token()) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

/// Whether `headers` carry `token` (an empty `token` lets everything in).
fn check(headers: &HeaderMap, token: &str) -> Result<(), AuthError> {
    if token.is_empty() {
        return Ok(());
    }
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, given) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    // The scheme is case-insensitive (RFC 9110); the token is not.
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    if same_secret(given.trim().as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::Wrong)
    }
}

/// Compares two secrets in a time that depends only on their lengths, so
/// that timing the answers to guesses does not reveal how much of a guess
/// was right. (The length is not secret: local tokens all have the same.)
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    let difference = given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    // Keeps the compiler from turning the fold into an early exit.
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"", b"abc"));
        assert!(same_secret(b"", b""));
    }

    #[test]
    fn the_token_is_checked_only_when_there_is_one() {
        assert_eq!(check(&HeaderMap::new(), ""), Ok(()));
        assert_eq!(check(&with("Bearer anything"), ""), Ok(()));
        assert_eq!(check(&HeaderMap::new(), "s3cret"), Err(AuthError::Missing));
        assert_eq!(check(&with("Bearer s3cret"), "s3cret"), Ok(()));
        assert_eq!(check(&with("bearer  s3cret "), "s3cret"), Ok(()));
        assert_eq!(
            check(&with("Bearer S3CRET"), "s3cret"),
            Err(AuthError::Wrong)
        );
        assert_eq!(check(&with("Bearer"), "s3cret"), Err(AuthError::Malformed));
        assert_eq!(
            check(&with("Basic czNjcmV0"), "s3cret"),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn refusals_say_what_to_do() {
        for refused in [AuthError::Missing, AuthError::Malformed, AuthError::Wrong] {
            let text = refused.to_string();
            assert!(
                text.contains("--token") && text.contains("SPATE_TOKEN"),
                "{text}"
            );
        }
        assert_eq!(AuthError::Missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(AuthError::Wrong.status(), StatusCode::FORBIDDEN);
    }
}
