//! What every task of the operator shares; nothing global.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::Recorder;
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::state::{Published, Stores};
use crate::usage::UsageBook;

/// The field manager for everything the operator writes (server-side apply).
pub const MANAGER: &str = "llm-weaver";

pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub leadership: Leadership,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub authenticator: Authenticator,
    pub usage: Mutex<UsageBook>,
    pub published: watch::Receiver<Arc<Published>>,
    /// Live gateway count, fed back into the snapshot.
    pub replicas: watch::Sender<u32>,
    /// Client for forwarding reports to the leader (trusts our own CA).
    pub forward: reqwest::Client,
    pub gateway_timeout: Duration,
}

impl Context {
    pub fn usage(&self) -> std::sync::MutexGuard<'_, UsageBook> {
        self.usage.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
