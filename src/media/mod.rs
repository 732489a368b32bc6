//! Media: the files customers send (and the business app's echoes carry), fetched from the
//! Graph API while their ids live, kept in the media store, served to the workspace, and
//! read back for a model that sees or hears.
//!
//! A file's job is a `media` row made in the store transaction that stores its message
//! (`store/media.rs`): it survives a crash, and a redelivered message makes none. The
//! [`worker`] claims due jobs with a lease, fetches ([`fetch`]) and records `stored` or
//! `failed` with the reason; failures worth another try back off until the media id expires.
//! No job holds up its conversation: the message is applied at once, the file follows.

pub mod fetch;
pub mod scale;
pub mod storage;
pub mod worker;

use std::{collections::HashMap, time::Duration};

pub use storage::MediaStore;

use crate::config::{Config, MediaConfig};

/// What fetching needs: the store, an HTTP client, the Graph API and the accounts' tokens.
pub struct Media {
    pub store: MediaStore,
    pub cfg: MediaConfig,
    http: reqwest::Client,
    /// `{base_url}/{version}`.
    graph_base: String,
    /// Graph API token per `phone_number_id`.
    tokens: HashMap<String, String>,
}

impl Media {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let mut tokens = HashMap::new();
        for account in &config.accounts {
            if let Ok(token) = account.resolve_access_token() {
                tokens.insert(account.phone_number_id.clone(), token);
            }
        }
        Ok(Self {
            store: MediaStore::new(&config.media)?,
            cfg: config.media.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(config.media.download_timeout_ms))
                .user_agent(concat!("wahook/", env!("CARGO_PKG_VERSION")))
                .build()?,
            graph_base: format!(
                "{}/{}",
                config.graph.base_url.trim_end_matches('/'),
                config.graph.version
            ),
            tokens,
        })
    }

    pub fn token(&self, phone_number_id: &str) -> Option<&str> {
        self.tokens.get(phone_number_id).map(String::as_str)
    }
}

/// A MIME type without its parameters (`audio/ogg; codecs=opus` → `audio/ogg`), lower case.
pub fn essence(mime: &str) -> String {
    mime.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}
