//! Where records go: JSON log lines, a Redis stream, an HTTP webhook. Each remote sink is a
//! task behind a bounded queue; writing never waits, a full queue or a failed delivery is a
//! counted drop.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use kubesbc_crds::observe::{RedisSink, WebhookSink, webhook_target};
use tokio::sync::mpsc;

use super::metrics::{ObserveMetrics, Stage};

/// Which stream a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A CDR.
    Cdr,
    /// A registration event.
    Registration,
}

impl RecordKind {
    /// The `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            RecordKind::Cdr => "cdr",
            RecordKind::Registration => "registration",
        }
    }
}

/// The configured sinks.
pub struct Sinks {
    log: bool,
    redis: Option<mpsc::Sender<(RecordKind, String)>>,
    webhook: Option<mpsc::Sender<String>>,
    metrics: ObserveMetrics,
}

/// Records per Redis pipeline.
const REDIS_BATCH: usize = 128;

impl Sinks {
    /// Starts the sink tasks (on the current runtime). `redis_url` is the stream's URL
    /// (the section's, else the store's).
    pub fn start(
        log: bool,
        redis: Option<(&RedisSink, String)>,
        webhook: Option<&WebhookSink>,
        metrics: ObserveMetrics,
    ) -> Result<Sinks, String> {
        let redis = match redis {
            Some((cfg, url)) => {
                let client = ::redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
                let (tx, rx) = mpsc::channel(cfg.queue_size);
                tokio::spawn(redis_task(client, cfg.clone(), rx, metrics.clone()));
                Some(tx)
            }
            None => None,
        };
        let webhook = match webhook {
            Some(cfg) => {
                let (tx, rx) = mpsc::channel(cfg.queue_size);
                tokio::spawn(webhook_task(cfg.clone(), rx, metrics.clone()));
                Some(tx)
            }
            None => None,
        };
        Ok(Sinks {
            log,
            redis,
            webhook,
            metrics,
        })
    }

    /// Writes one record (its JSON) to every sink, without waiting.
    pub fn write(&self, kind: RecordKind, json: String) {
        if self.log {
            match kind {
                RecordKind::Cdr => tracing::info!(target: "kubesbc::cdr", "{json}"),
                RecordKind::Registration => {
                    tracing::info!(target: "kubesbc::registration", "{json}")
                }
            }
            self.metrics.written(kind, "log", 1);
        }
        if let Some(w) = &self.webhook
            && w.try_send(json.clone()).is_err()
        {
            self.metrics.dropped(Stage::Webhook, 1);
        }
        if let Some(r) = &self.redis
            && r.try_send((kind, json)).is_err()
        {
            self.metrics.dropped(Stage::Redis, 1);
        }
    }
}

async fn redis_task(
    client: ::redis::Client,
    cfg: RedisSink,
    mut rx: mpsc::Receiver<(RecordKind, String)>,
    metrics: ObserveMetrics,
) {
    let config = ::redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    let mut conn = None;
    let mut batch = Vec::with_capacity(REDIS_BATCH);
    while rx.recv_many(&mut batch, REDIS_BATCH).await > 0 {
        if conn.is_none() {
            conn = ::redis::aio::ConnectionManager::new_with_config(client.clone(), config.clone())
                .await
                .ok();
        }
        let n = batch.len() as u64;
        let Some(c) = conn.as_mut() else {
            metrics.dropped(Stage::Redis, n);
            batch.clear();
            // A Redis that is down costs one connection attempt per second, not per batch.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut pipe = ::redis::pipe();
        let (mut cdrs, mut regs) = (0u64, 0u64);
        for (kind, json) in batch.drain(..) {
            let stream = match kind {
                RecordKind::Cdr => {
                    cdrs += 1;
                    &cfg.cdr_stream
                }
                RecordKind::Registration => {
                    regs += 1;
                    &cfg.registration_stream
                }
            };
            pipe.cmd("XADD")
                .arg(stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(cfg.max_len)
                .arg("*")
                .arg("record")
                .arg(json)
                .ignore();
        }
        match pipe.query_async::<()>(c).await {
            Ok(()) => {
                metrics.written(RecordKind::Cdr, "redis", cdrs);
                metrics.written(RecordKind::Registration, "redis", regs);
            }
            Err(e) => {
                tracing::debug!(error = %e, "records: redis stream write failed");
                metrics.dropped(Stage::Redis, n);
            }
        }
    }
}

async fn webhook_task(cfg: WebhookSink, mut rx: mpsc::Receiver<String>, metrics: ObserveMetrics) {
    let Some((authority, path)) = webhook_target(&cfg.url) else {
        return;
    };
    let flush = Duration::from_millis(cfg.flush_ms);
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let mut batch: Vec<String> = Vec::with_capacity(cfg.batch_size);
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + flush;
        while batch.len() < cfg.batch_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                _ => break,
            }
        }
        let n = batch.len() as u64;
        let mut body = String::with_capacity(batch.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
        body.push('[');
        for (i, r) in batch.drain(..).enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&r);
        }
        body.push(']');
        let body = Bytes::from(body);
        let mut delivered = false;
        for attempt in 0..cfg.attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
            }
            match tokio::time::timeout(timeout, post(&authority, &path, body.clone())).await {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    delivered = true;
                    break;
                }
                Ok(Ok(status)) => tracing::debug!(status, "records: webhook refused a batch"),
                Ok(Err(e)) => tracing::debug!(error = %e, "records: webhook failed"),
                Err(_) => tracing::debug!("records: webhook timed out"),
            }
        }
        if delivered {
            metrics.webhook_batch(n);
        } else {
            metrics.dropped(Stage::Webhook, n);
        }
    }
}

/// One POST over a fresh connection; returns the status.
async fn post(authority: &str, path: &str, body: Bytes) -> Result<u16, String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    // Read (bounded) and discard the body so the server sees a clean exchange.
    let _ = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(r: &prometheus::Registry, name: &str, label: &str) -> f64 {
        r.gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| m.get_label().iter().any(|l| l.value() == label))
            .map(|m| m.get_counter().get_value())
            .sum()
    }

    #[tokio::test]
    async fn full_queues_drop_and_count_without_waiting() {
        let r = prometheus::Registry::new();
        let m = ObserveMetrics::new(&r).unwrap();
        // Nothing listens on port 9 of loopback: every delivery fails.
        let redis = RedisSink {
            url: None,
            cdr_stream: "c".into(),
            registration_stream: "r".into(),
            max_len: 10,
            queue_size: 2,
        };
        let hook = WebhookSink {
            url: "http://127.0.0.1:9/x".into(),
            batch_size: 1,
            flush_ms: 10,
            attempts: 1,
            timeout_ms: 100,
            queue_size: 2,
        };
        let s = Sinks::start(
            false,
            Some((&redis, "redis://127.0.0.1:9/0".into())),
            Some(&hook),
            m,
        )
        .unwrap();
        let started = std::time::Instant::now();
        for i in 0..50 {
            s.write(RecordKind::Cdr, format!("{{\"n\":{i}}}"));
        }
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "writing waited"
        );
        // At most the queue and the batch in flight are not yet counted.
        assert!(metric(&r, "sbc_observe_dropped_total", "webhook") >= 46.0);
        assert!(metric(&r, "sbc_observe_dropped_total", "redis") >= 46.0);
        // The rest fail delivery and are counted too.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metric(&r, "sbc_observe_dropped_total", "webhook") < 50.0
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(metric(&r, "sbc_observe_dropped_total", "webhook"), 50.0);
    }
}
