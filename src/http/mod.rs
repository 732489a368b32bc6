//! The HTTP front: one router per resource file, merged here with the layers (body limit,
//! request metrics by route template).

pub mod api;
mod console;
mod health;
pub mod serve;
mod webhooks;

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use metrics_exporter_prometheus::PrometheusHandle;
use sea_orm::DatabaseConnection;

use crate::{config::Config, metrics as m, store::accounts::Directory, store::inbox::Inbox};

/// Shared by every handler; one `Arc` so a request clones a single pointer.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    pub fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }
}

pub struct AppInner {
    pub db: DatabaseConnection,
    pub config: Arc<Config>,
    pub inbox: Inbox,
    pub metrics: PrometheusHandle,
    pub processing: Arc<crate::actors::Ctx>,
    /// Cluster mode: where committed events are published before their 200.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The operator API's token cache and bad-token counters.
    pub auth: api::Auth,
    /// Kapso projects by `project_id`: their workspace and webhook secret.
    pub kapso_projects: Arc<std::collections::HashMap<String, (i64, String)>>,
}

impl AppInner {
    /// The current account directory (shared with processing; a cheap `Arc` clone).
    pub fn directory(&self) -> Arc<Directory> {
        self.processing.directory()
    }
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.server.body_limit_bytes;
    let request_timeout = std::time::Duration::from_millis(state.config.server.request_timeout_ms);
    Router::new()
        .merge(health::router())
        .merge(console::router())
        .merge(webhooks::router())
        .merge(api::router(state.clone()))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            bounded(request_timeout, req, next)
        }))
        .layer(middleware::from_fn(track_request))
        .with_state(state)
}

/// A request read and answered within `limit`, or 408 (a body trickled in slowly is cut).
async fn bounded(limit: std::time::Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            metrics::counter!(m::REQUEST_TIMEOUTS).increment(1);
            (
                StatusCode::REQUEST_TIMEOUT,
                [(axum::http::header::CONNECTION, "close")],
                "the request was not received in time\n",
            )
                .into_response()
        }
    }
}

/// OpenTelemetry's `http.server.request.duration`, labelled by route template (never a raw
/// path, which could carry ids), method and status.
async fn track_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "_OTHER",
    };
    let response = next.run(req).await;
    metrics::histogram!(
        m::HTTP_REQUEST_DURATION,
        "http_route" => route,
        "http_request_method" => method,
        "http_response_status_code" => status_label(response.status()),
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// Status codes as static labels (no allocation per request for the common ones).
fn status_label(status: StatusCode) -> metrics::SharedString {
    match status.as_u16() {
        200 => "200".into(),
        400 => "400".into(),
        401 => "401".into(),
        403 => "403".into(),
        404 => "404".into(),
        405 => "405".into(),
        413 => "413".into(),
        503 => "503".into(),
        other => other.to_string().into(),
    }
}
