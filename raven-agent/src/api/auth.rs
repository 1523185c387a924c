//! Bearer tokens.
//!
//! Invariants:
//! - Several tokens are valid at once (rotation without downtime): the
//!   lines of `api.tokens_file` plus `RAVEN_API_TOKENS` (comma-separated).
//! - Tokens are compared in constant time against SHA-256 digests, so the
//!   comparison leaks neither the token nor its length.
//! - With no token configured, every protected path answers 401: the
//!   default is closed.
//! - Tokens never appear in logs or errors.

use std::path::Path;

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

use super::{ApiError, ApiState};

#[derive(Clone, Default)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
    pub open_paths: Vec<String>,
    pub status_page_public: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("api.tokens_file {path}: {source}")]
pub struct TokensError {
    path: String,
    source: std::io::Error,
}

impl Tokens {
    pub fn new(tokens: impl IntoIterator<Item = String>) -> Tokens {
        let digests = tokens
            .into_iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty() && !t.starts_with('#'))
            .map(|t| Sha256::digest(t.as_bytes()).into())
            .collect();
        Tokens { digests, ..Tokens::default() }
    }

    /// The tokens of `config` (file and environment).
    pub fn load(config: &crate::config::ApiConfig) -> Result<Tokens, TokensError> {
        let mut lines: Vec<String> = Vec::new();
        if !config.tokens_file.is_empty() {
            let text = std::fs::read_to_string(Path::new(&config.tokens_file))
                .map_err(|source| TokensError { path: config.tokens_file.clone(), source })?;
            lines.extend(text.lines().map(String::from));
        }
        if let Ok(env) = std::env::var("RAVEN_API_TOKENS") {
            lines.extend(env.split(',').map(String::from));
        }
        let mut tokens = Tokens::new(lines);
        tokens.open_paths = config.open_paths.clone();
        tokens.status_page_public = config.status_page_public;
        Ok(tokens)
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn accepts(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Check every token, so the time does not tell which one matched.
        self.digests
            .iter()
            .fold(false, |found, known| constant_time_eq::constant_time_eq(known, &digest) | found)
    }

    fn is_open(&self, path: &str, method: &axum::http::Method) -> bool {
        if method != axum::http::Method::GET {
            return false;
        }
        // The page itself is a static shell; its data is what needs the token.
        path == "/"
            || (path == "/api/status" && self.status_page_public)
            || self.open_paths.iter().any(|p| p == path)
    }
}

pub async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let tokens = state.tokens.read().expect("token lock").clone();
    if tokens.is_open(request.uri().path(), request.method()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if tokens.accepts(token) => next.run(request).await,
        Some(_) => unauthorized("invalid token"),
        None => unauthorized("a bearer token is required (Authorization: Bearer <token>)"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_token_is_accepted_and_nothing_else() {
        let tokens = Tokens::new(["old-token".into(), "new-token".into(), "# comment".into()]);
        assert!(tokens.accepts("old-token"));
        assert!(tokens.accepts("new-token"));
        assert!(!tokens.accepts("# comment"));
        assert!(!tokens.accepts("new-token "));
        assert!(!tokens.accepts(""));
        assert!(!Tokens::default().accepts(""));
    }
}
