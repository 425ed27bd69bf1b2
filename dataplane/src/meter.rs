//! One record per request, written when the request is over — also when the
//! client goes away mid-stream, because the record is written on drop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gateway::Gateway;
use crate::metrics::{Direction, Label, RequestLabels, RouteLabels, TokenLabels};
use crate::stats::{Id, Outcome, Route};
use crate::usage::Usage;

/// Status recorded for requests the client abandoned (nginx's convention).
pub const CLIENT_CLOSED: u16 = 499;

pub struct Meter {
    gw: Arc<Gateway>,
    started: Instant,
    /// The authenticated key.
    pub key: Option<Id>,
    pub route: Option<Route>,
    pub status: u16,
    pub first_byte: Option<Duration>,
    pub usage: Option<Usage>,
}

impl Meter {
    pub fn start(gw: Arc<Gateway>, started: Instant) -> Self {
        gw.metrics.in_flight.inc();
        Self { gw, started, key: None, route: None, status: CLIENT_CLOSED, first_byte: None, usage: None }
    }

    pub fn mark_first_byte(&mut self) {
        self.first_byte = Some(self.started.elapsed());
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let m = &self.gw.metrics;
        m.in_flight.dec();
        self.gw.stats.record(&Outcome {
            key: self.key.as_ref(),
            route: self.route.as_ref(),
            status: self.status,
            first_byte: self.first_byte,
            usage: self.usage,
        });
        let (namespace, key) = self.key.clone().unwrap_or_else(|| (Label::none(), Label::none()));
        let (model, channel) = self
            .route
            .as_ref()
            .map_or_else(|| (Label::none(), Label::none()), |r| (r.model.clone(), r.channel.1.clone()));
        m.requests
            .get_or_create(&RequestLabels {
                namespace: namespace.clone(),
                key: key.clone(),
                model: model.clone(),
                channel: channel.clone(),
                code: self.status,
            })
            .inc();
        if self.route.is_none() {
            return;
        }
        let route = RouteLabels { model: model.clone(), channel: channel.clone() };
        if let Some(ttfb) = self.first_byte {
            m.first_token.get_or_create(&route).observe(ttfb.as_secs_f64());
        }
        m.duration.get_or_create(&route).observe(self.started.elapsed().as_secs_f64());
        if let Some(u) = self.usage {
            let cached = u.cached_tokens();
            for (direction, n) in [
                (Direction::input, u.prompt_tokens),
                (Direction::cached_input, cached),
                (Direction::output, u.completion_tokens),
            ] {
                if n > 0 {
                    m.tokens
                        .get_or_create(&TokenLabels {
                            namespace: namespace.clone(),
                            key: key.clone(),
                            model: model.clone(),
                            channel: channel.clone(),
                            direction,
                        })
                        .inc_by(n);
                }
            }
        }
    }
}
