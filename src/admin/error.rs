//! API errors: an HTTP status that fits and a JSON body naming what was wrong,
//! `{"error": {"code": "...", "message": "..."}}` (plus `index` for a batch).

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::upstream::TableError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The failing operation of a batch.
    pub index: Option<usize>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            index: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }
}

impl From<TableError> for ApiError {
    fn from(e: TableError) -> Self {
        let message = e.to_string();
        match e {
            TableError::UnknownUpstream(_) => ApiError::not_found("UpstreamNotFound", message),
            TableError::UnknownServer { .. } => ApiError::not_found("ServerNotFound", message),
            TableError::UpstreamExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "UpstreamExists", message)
            }
            TableError::DuplicateServer { .. } => {
                ApiError::new(StatusCode::CONFLICT, "ServerExists", message)
            }
            TableError::BadWeight(_) => ApiError::unprocessable("BadWeight", message),
            TableError::BackupWithHash(_) => ApiError::unprocessable("BadBackup", message),
            TableError::Resolve { .. } => ApiError::unprocessable("BadAddress", message),
            TableError::Store(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "StateNotSaved", message)
            }
            TableError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "Conflict", message),
            TableError::StoreUnavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "StoreUnavailable", message)
            }
            TableError::StoreOutcomeUnknown(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "StoreOutcomeUnknown",
                message,
            ),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                index: self.index,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// `Path`, refusing a bad segment (say, one that decodes to invalid UTF-8) with
/// an [`ApiError`] instead of axum's plain-text 400.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(ApiPath(t)),
            Err(e) => Err(ApiError::new(e.status(), "BadPath", e.body_text())),
        }
    }
}

/// `Query`, refusing a bad query string (say, a key given twice) with an
/// [`ApiError`] instead of axum's plain-text 400.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(t)) => Ok(ApiQuery(t)),
            Err(e) => Err(ApiError::new(e.status(), "BadQuery", e.body_text())),
        }
    }
}
