//! The policy stages between sanity and routing (docs/architecture.md steps 5 to 7: guard,
//! auth, throttle). Each stage looks at a request and decides: go on, answer with a status, or drop.
//! Stages may wait on the shared store, so the relay runs them off the receive loop and only
//! when at least one is configured: with none, requests never leave the fast path.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::sip::{HeaderName, Message, Method};
use crate::transport::Peer;

/// A boxed future returned by stages.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the relay knows about a request when a stage looks at it.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext {
    /// Where it came from.
    pub peer: Peer,
    /// Its method.
    pub method: Method,
    /// Whether it belongs to a dialog (its To has a tag).
    pub in_dialog: bool,
}

/// A stage's refusal: the status, reason phrase and extra headers the caller gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Status code.
    pub code: u16,
    /// Reason phrase, naming why.
    pub reason: Cow<'static, str>,
    /// Extra headers (`Retry-After`, `WWW-Authenticate`...).
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

impl Refusal {
    /// A refusal with no extra header.
    pub fn new(code: u16, reason: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal {
            code,
            reason: reason.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Refusal {
        self.headers.push((name, value.into()));
        self
    }
}

/// A stage's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the request go on to the next stage and then to routing.
    Continue,
    /// Answer the request from the sbc.
    Reply(Refusal),
    /// Drop the request without an answer (scanners, banned sources).
    Drop,
}

/// What stages ask of the relay for a request they let through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// Headers to remove before relaying (credentials meant for the sbc).
    pub strip: Vec<HeaderName>,
}

/// One policy stage.
pub trait Stage: Send + Sync {
    /// The stage's name, for logs and metrics.
    fn name(&self) -> &'static str;

    /// Decides on a request. Called for every request except ACK, CANCEL and
    /// retransmissions of a request already in a transaction.
    fn check<'a>(
        &'a self,
        req: &'a Message,
        cx: &'a RequestContext,
        admission: &'a mut Admission,
    ) -> BoxFuture<'a, Verdict>;

    /// The transaction of a request that passed every stage ended with `code` (a final
    /// response relayed, a timeout, a cancel). Throttles release capacity here.
    fn on_final(&self, _req: &Message, _cx: &RequestContext, _code: u16) {}

    /// A BYE of a dialog was relayed: the call is over.
    fn on_dialog_end(&self, _req: &Message, _cx: &RequestContext) {}
}

/// The configured stages, in order.
#[derive(Clone, Default)]
pub struct Pipeline {
    stages: Vec<Arc<dyn Stage>>,
}

impl Pipeline {
    /// A pipeline of `stages`, run in order.
    pub fn new(stages: Vec<Arc<dyn Stage>>) -> Pipeline {
        Pipeline { stages }
    }

    /// Whether no stage is configured.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// The stages.
    pub fn stages(&self) -> &[Arc<dyn Stage>] {
        &self.stages
    }

    /// Runs the stages until one does not continue.
    pub async fn run(&self, req: &Message, cx: &RequestContext) -> (Verdict, Admission) {
        let mut admission = Admission::default();
        for s in &self.stages {
            let v = s.check(req, cx, &mut admission).await;
            if v != Verdict::Continue {
                tracing::debug!(stage = s.name(), verdict = ?v, "request stopped");
                return (v, admission);
            }
        }
        (Verdict::Continue, admission)
    }

    /// Tells every stage a transaction ended.
    pub fn final_response(&self, req: &Message, cx: &RequestContext, code: u16) {
        for s in &self.stages {
            s.on_final(req, cx, code);
        }
    }

    /// Tells every stage a dialog ended.
    pub fn dialog_end(&self, req: &Message, cx: &RequestContext) {
        for s in &self.stages {
            s.on_dialog_end(req, cx);
        }
    }
}
