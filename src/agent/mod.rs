//! The AI agent: per agent type an OpenAI-compatible provider behind a circuit breaker, the
//! Graph API client that sends the replies, the conversation context with a real tokenizer,
//! and the turn that ties them together. Conversation actors run turns as tasks of their own
//! (`actors/conversation.rs` decides when: one turn per burst of messages).

pub mod breaker;
pub mod context;
pub mod files;
pub mod followup;
pub mod graph;
pub mod leads;
pub mod notify;
pub mod outbox;
pub mod provider;
pub mod reply;
pub mod templates;
pub mod turn;

use std::{collections::HashMap, sync::Arc};

use crate::config::Config;
use graph::Graph;
use provider::Provider;

/// Every configured agent type, and the send side they share.
pub struct Agents {
    providers: HashMap<String, Arc<Provider>>,
    /// Graph API access token per `phone_number_id` of an account with an agent.
    tokens: HashMap<String, String>,
    pub graph: Arc<Graph>,
    /// The media store and its fetcher (files a model sees or hears are read from it).
    pub media: Arc<crate::media::Media>,
}

/// What a conversation needs to answer through an account.
#[derive(Clone)]
pub struct Answerer {
    pub provider: Arc<Provider>,
    pub graph: Arc<Graph>,
    pub media: Arc<crate::media::Media>,
    pub phone_number_id: String,
    pub token: String,
}

impl Agents {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let mut providers = HashMap::new();
        for (name, cfg) in &config.agents {
            let provider = Provider::new(name, cfg.clone())
                .map_err(|e| anyhow::anyhow!("agents.{name}: {e}"))?;
            providers.insert(name.clone(), Arc::new(provider));
        }
        let mut tokens = HashMap::new();
        // Every account with a Graph token can send (operators' sends); an agent account must.
        for account in &config.accounts {
            if let Ok(token) = account.resolve_access_token() {
                tokens.insert(account.phone_number_id.clone(), token);
            }
        }
        Ok(Self {
            providers,
            tokens,
            graph: Arc::new(Graph::new(&config.graph)?),
            media: Arc::new(crate::media::Media::new(config)?),
        })
    }

    /// The answerer for an account whose `agent_type` is `agent`; `None` when the agent type
    /// or the account's token is not configured (then it gets no replies, and a warning).
    pub fn answerer(&self, agent: &str, phone_number_id: &str) -> Option<Answerer> {
        let provider = self.providers.get(agent)?.clone();
        let Some(token) = self.tokens.get(phone_number_id) else {
            tracing::warn!(
                agent,
                phone_number_id,
                "an account names an agent but has no access token configured; no replies"
            );
            return None;
        };
        Some(Answerer {
            provider,
            media: self.media.clone(),
            graph: self.graph.clone(),
            phone_number_id: phone_number_id.to_owned(),
            token: token.clone(),
        })
    }

    /// The Graph API token of an account, if one is configured.
    pub fn token(&self, phone_number_id: &str) -> Option<&str> {
        self.tokens.get(phone_number_id).map(String::as_str)
    }

    /// An agent type's configuration.
    pub fn config(&self, agent: &str) -> Option<&crate::config::AgentConfig> {
        self.providers.get(agent).map(|p| &p.cfg)
    }

    pub fn configs(&self) -> impl Iterator<Item = &crate::config::AgentConfig> {
        self.providers.values().map(|p| &p.cfg)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.providers.keys()
    }
}
