//! A NATS Streaming (STAN) client on core NATS: what the course's Node services speak
//! (docs/contract.md §2.1; the protocol as we speak it: docs/nats-streaming.md). STAN is protobuf messages over core NATS
//! request/reply, so a [`Connection`] is an `async_nats::Client` plus a *session* the server
//! knows by our client id:
//!
//! - opening a session: a `ConnectRequest` to `_STAN.discover.<cluster id>`, whose answer names
//!   the subjects of every later request (random on some server versions, so never assumed);
//! - keeping it: answering the server's heartbeats, and pinging it (protocol 1) so that a session
//!   the server dropped (restarted with its memory store, or replaced us) is noticed;
//! - losing it: every waiting publish fails at once, [`Connection::session`] turns `None`, the
//!   subscriptions of the old session end, and a new session is opened, retrying with backoff
//!   (250 ms doubling to 2 s), without restarting the process; why it cannot be opened yet is
//!   what [`Connection::check`] (`/readyz`) answers. The listeners then subscribe again
//!   ([`Subscription`]).
//! - the protocol does not authenticate clients: anyone on the broker can send the close request
//!   for our client id and then connect with it. The reopen is refused while that client holds
//!   the id ([`StreamingError::ClientIdTaken`], logged once as an error) and succeeds at the
//!   first attempt after it lets go.
//!
//! Publishing ([`Connection::publish`]) sends a `PubMsg` and waits for the `PubAck` carrying
//! its guid; many may be outstanding at once (bounded). The server does not de-duplicate: a
//! publish that timed out may have been stored, so every consumer is idempotent.

mod proto;
mod subscription;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Request, RequestErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message as _;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use subscription::{AckHandle, Delivery, Subscription, SubscriptionSpec};

/// How long the server has to answer a connect or subscribe request. Longer than the course's
/// heartbeat timeout (5 s), because a connect reusing the client id of a pod that died makes the
/// server check the old holder's heartbeat before it answers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(6);

/// How long a publish waits for its `PubAck` (the Node client's default).
pub const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Most publishes waiting for their `PubAck` at once (the Node client's default); more wait
/// for a free place.
pub const MAX_OUTSTANDING_PUBLISHES: usize = 16_384;

/// How often we ping the server (in seconds, as the protocol counts them; the server may ask for
/// other values), and how many unanswered pings in a row mean the session is gone: a silent loss
/// is noticed within about 15 s (three rounds of a 3 s pause and a 2 s wait for the answer).
const PING_INTERVAL_SECONDS: i32 = 3;
const PING_MAX_OUT: i32 = 3;

/// How long a ping waits for its answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest pause between attempts to open a new session.
const MAX_REOPEN_PAUSE: Duration = Duration::from_secs(2);

/// Why a NATS Streaming operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error(
        "no NATS Streaming server answers for cluster id `{cluster_id}` (_STAN.discover.{cluster_id}); is NATS_CLUSTER_ID right?"
    )]
    NoServer { cluster_id: String },
    #[error("the NATS Streaming server refused: {0}")]
    Refused(String),
    #[error(
        "the NATS Streaming server refused: another client holds our client id `{0}` (NATS Streaming does not authenticate clients)"
    )]
    ClientIdTaken(String),
    #[error(
        "`{0}` cannot be a NATS Streaming client id (NATS_CLIENT_ID): use only letters, digits, `-` and `_`"
    )]
    ClientId(String),
    #[error("no NATS Streaming session at the moment (it was lost; a new one is being opened)")]
    NoSession,
    #[error("the NATS Streaming session was lost before the server acknowledged")]
    SessionLost,
    #[error("the NATS Streaming server did not acknowledge within {0:?}")]
    AckTimeout(Duration),
    #[error("a NATS request failed")]
    Request(#[source] async_nats::RequestError),
    #[error("a NATS publish failed")]
    Publish(#[source] async_nats::PublishError),
    #[error("a NATS subscribe failed")]
    Subscribe(#[source] async_nats::SubscribeError),
    #[error("the NATS Streaming server's answer cannot be decoded")]
    Decode(#[source] prost::DecodeError),
    #[error("the NATS Streaming connection is closed")]
    Closed,
}

/// Whether `id` is a client id the server accepts (`^[a-zA-Z0-9_-]+$`).
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A connection to a NATS Streaming cluster, kept alive across lost sessions. Cheap to clone.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    cluster_id: String,
    client_id: String,
    session: watch::Sender<Option<Arc<Session>>>,
    /// Why the last attempt to open a new session failed, while there is none.
    reopen_error: Mutex<Option<String>>,
    outstanding: Arc<Semaphore>,
    closed: CancellationToken,
}

/// One session the server knows us by: its request subjects and the publishes waiting for acks.
pub(crate) struct Session {
    conn_id: Bytes,
    subjects: proto::ConnectResponse,
    /// Where this session's `PubAck`s arrive.
    ack_subject: String,
    pending: Mutex<HashMap<String, oneshot::Sender<Result<(), String>>>>,
    /// Cancelled when the session is found lost; everything tied to it stops.
    lost: CancellationToken,
}

impl Session {
    /// The error for a request the server refused; a refusal because the server does not know
    /// our client id (it restarted, or dropped us) means this session is lost: a new one is
    /// opened at once rather than at the next ping.
    fn refused(&self, error: String) -> StreamingError {
        if error.contains("unknown clientID") {
            tracing::warn!(%error, "the NATS Streaming server no longer knows this session");
            self.lost.cancel();
        }
        StreamingError::Refused(error)
    }

    /// Fails every publish still waiting for its ack.
    fn fail_pending(&self) {
        self.pending.lock().expect("pending lock").clear();
    }
}

impl Connection {
    /// Opens a session as `client_id` on the cluster `cluster_id` over `client`, and keeps one
    /// open until [`close`](Connection::close). Fails if no server answers for that cluster id,
    /// or if it refuses us.
    pub async fn open(
        client: async_nats::Client,
        cluster_id: &str,
        client_id: &str,
    ) -> Result<Connection, StreamingError> {
        if !valid_client_id(client_id) {
            return Err(StreamingError::ClientId(client_id.to_owned()));
        }
        let (session, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            client,
            cluster_id: cluster_id.to_owned(),
            client_id: client_id.to_owned(),
            session,
            reopen_error: Mutex::new(None),
            outstanding: Arc::new(Semaphore::new(MAX_OUTSTANDING_PUBLISHES)),
            closed: CancellationToken::new(),
        });
        let first = open_session(&inner).await?;
        inner.session.send_replace(Some(first));
        tokio::spawn(keep_open(inner.clone()));
        tracing::info!(cluster_id, client_id, "NATS Streaming session open");
        Ok(Connection { inner })
    }

    /// The core NATS client underneath.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Our client id.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The current session, `None` while a lost one is being replaced (also in the moment
    /// between finding it lost and dropping it).
    pub(crate) fn session(&self) -> Option<Arc<Session>> {
        self.inner
            .session
            .borrow()
            .clone()
            .filter(|session| !session.lost.is_cancelled())
    }

    /// Whether a session is open and the core connection is up: a publish can be acked now.
    pub fn connected(&self) -> bool {
        self.session().is_some()
            && self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Waits until a session is open and not known to be lost; `None` if the connection was
    /// closed first.
    pub(crate) async fn wait_session(&self) -> Option<Arc<Session>> {
        let mut watch = self.inner.session.subscribe();
        tokio::select! {
            _ = self.inner.closed.cancelled() => None,
            session = watch.wait_for(|session| {
                session.as_ref().is_some_and(|session| !session.lost.is_cancelled())
            }) => {
                session.ok().and_then(|session| session.clone())
            }
        }
    }

    /// Publishes `data` on `channel` and waits (up to [`PUBLISH_ACK_TIMEOUT`]) for the server
    /// to store it. Fails at once while there is no session.
    pub async fn publish(&self, channel: &str, data: Bytes) -> Result<(), StreamingError> {
        let session = self.session().ok_or(StreamingError::NoSession)?;
        let _place = self
            .inner
            .outstanding
            .acquire()
            .await
            .map_err(|_| StreamingError::Closed)?;
        let guid = nuid::next().to_string();
        let (sender, answer) = oneshot::channel();
        session
            .pending
            .lock()
            .expect("pending lock")
            .insert(guid.clone(), sender);
        // Forgets the guid however this ends: acked, timed out, or the caller gave up.
        let _forget = Forget(&session, &guid);
        // Lost since we took it: its waiting publishes were failed already, this one with them.
        if session.lost.is_cancelled() {
            return Err(StreamingError::SessionLost);
        }
        let message = proto::PubMsg {
            client_id: self.inner.client_id.clone(),
            guid: guid.clone(),
            subject: channel.to_owned(),
            data,
            conn_id: session.conn_id.clone(),
        };
        self.inner
            .client
            .publish_with_reply(
                format!("{}.{channel}", session.subjects.pub_prefix),
                session.ack_subject.clone(),
                message.encode_to_vec().into(),
            )
            .await
            .map_err(StreamingError::Publish)?;
        match tokio::time::timeout(PUBLISH_ACK_TIMEOUT, answer).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(session.refused(error)),
            Ok(Err(_)) => Err(StreamingError::SessionLost),
            Err(_) => Err(StreamingError::AckTimeout(PUBLISH_ACK_TIMEOUT)),
        }
    }

    /// The `/readyz` check: a session is open and answers a ping now. Without one, why the
    /// last attempt to open one failed (e.g. another client holds our client id).
    pub async fn check(&self) -> Result<(), String> {
        let session = self.session().ok_or_else(|| {
            let reason = self.inner.reopen_error.lock().expect("reopen error lock");
            match reason.as_deref() {
                Some(reason) => format!("NATS Streaming session lost; opening a new one: {reason}"),
                None => "NATS Streaming session lost; opening a new one".to_owned(),
            }
        })?;
        match ping(&self.inner.client, &session, Duration::from_secs(2)).await {
            Ping::Alive => Ok(()),
            Ping::Ended(error) => {
                session.lost.cancel();
                Err(format!("NATS Streaming ended our session: {error}"))
            }
            Ping::NoAnswer(error) => Err(format!("NATS Streaming does not answer: {error}")),
        }
    }

    /// Ends the session (the server forgets our client id; durable groups stay) and stops
    /// keeping one open. Subscriptions should be closed first.
    pub async fn close(&self) {
        self.inner.closed.cancel();
        let Some(session) = self.session() else {
            return;
        };
        session.lost.cancel();
        match close_request(&self.inner.client, &session, &self.inner.client_id).await {
            Ok(()) => {
                tracing::info!(client_id = %self.inner.client_id, "NATS Streaming session closed")
            }
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::ErrorChain(&e), "closing the NATS Streaming session")
            }
        }
    }

    /// Sends the close request for `client_id`, as any client on the broker can (the protocol
    /// does not authenticate): the server ends that client's session. What a squatter does
    /// before taking a client id, for tests.
    #[cfg(feature = "testing")]
    pub async fn close_session_of(&self, client_id: &str) -> Result<(), StreamingError> {
        let session = self.session().ok_or(StreamingError::NoSession)?;
        close_request(&self.inner.client, &session, client_id).await
    }
}

/// Asks the server (through `session`'s close subject) to end the session of `client_id`.
async fn close_request(
    client: &async_nats::Client,
    session: &Session,
    client_id: &str,
) -> Result<(), StreamingError> {
    let request = proto::CloseRequest {
        client_id: client_id.to_owned(),
    };
    let response = request_decoded::<proto::CloseResponse>(
        client,
        &session.subjects.close_requests,
        request.encode_to_vec(),
        Duration::from_secs(2),
    )
    .await?;
    if response.error.is_empty() {
        Ok(())
    } else {
        Err(StreamingError::Refused(response.error))
    }
}

/// Removes a publish's guid from its session's waiting list when dropped.
struct Forget<'a>(&'a Session, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.pending.lock().expect("pending lock").remove(self.1);
    }
}

/// Opens a new session: subscribes to our heartbeat inbox and ack subject first, then asks the
/// cluster; starts answering heartbeats, matching acks and pinging.
async fn open_session(inner: &Inner) -> Result<Arc<Session>, StreamingError> {
    let client = &inner.client;
    let heartbeat_inbox = client.new_inbox();
    let heartbeats = client
        .subscribe(heartbeat_inbox.clone())
        .await
        .map_err(StreamingError::Subscribe)?;
    let ack_subject = format!("_STAN.acks.{}", nuid::next());
    let acks = client
        .subscribe(ack_subject.clone())
        .await
        .map_err(StreamingError::Subscribe)?;
    let conn_id = Bytes::from(nuid::next().to_string());
    let request = proto::ConnectRequest {
        client_id: inner.client_id.clone(),
        heartbeat_inbox,
        protocol: 1,
        conn_id: conn_id.clone(),
        ping_interval: PING_INTERVAL_SECONDS,
        ping_max_out: PING_MAX_OUT,
    };
    let subjects = request_decoded::<proto::ConnectResponse>(
        client,
        &format!("_STAN.discover.{}", inner.cluster_id),
        request.encode_to_vec(),
        REQUEST_TIMEOUT,
    )
    .await
    .map_err(|e| match e {
        StreamingError::Request(e)
            if matches!(
                e.kind(),
                RequestErrorKind::NoResponders | RequestErrorKind::TimedOut
            ) =>
        {
            StreamingError::NoServer {
                cluster_id: inner.cluster_id.clone(),
            }
        }
        other => other,
    })?;
    if subjects.error.contains("clientID already registered") {
        // The server asked the holder's heartbeat inbox and got an answer: a live client.
        return Err(StreamingError::ClientIdTaken(inner.client_id.clone()));
    }
    if !subjects.error.is_empty() {
        return Err(StreamingError::Refused(subjects.error));
    }
    let ping_interval = Duration::from_secs(
        u64::try_from(subjects.ping_interval)
            .ok()
            .filter(|s| *s > 0)
            .unwrap_or(PING_INTERVAL_SECONDS as u64),
    );
    let ping_max_out = u32::try_from(subjects.ping_max_out)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or(PING_MAX_OUT as u32);
    let session = Arc::new(Session {
        conn_id,
        subjects,
        ack_subject,
        pending: Mutex::new(HashMap::new()),
        lost: CancellationToken::new(),
    });
    tokio::spawn(answer_heartbeats(
        client.clone(),
        heartbeats,
        session.lost.clone(),
    ));
    tokio::spawn(match_acks(session.clone(), acks));
    tokio::spawn(keep_pinging(
        client.clone(),
        session.clone(),
        ping_interval,
        ping_max_out,
    ));
    Ok(session)
}

/// Replaces a lost session with a new one, for as long as the connection is not closed.
async fn keep_open(inner: Arc<Inner>) {
    loop {
        let Some(session) = inner.session.borrow().clone() else {
            return;
        };
        tokio::select! {
            _ = inner.closed.cancelled() => return,
            _ = session.lost.cancelled() => {}
        }
        session.fail_pending();
        inner.session.send_replace(None);
        drop(session);
        tracing::warn!(client_id = %inner.client_id, "NATS Streaming session lost; opening a new one");
        let mut pause = Duration::from_millis(250);
        // Since when another client holds our client id, while it does.
        let mut taken_since: Option<std::time::Instant> = None;
        loop {
            let opened = tokio::select! {
                _ = inner.closed.cancelled() => return,
                opened = open_session(&inner) => opened,
            };
            match opened {
                Ok(session) => {
                    *inner.reopen_error.lock().expect("reopen error lock") = None;
                    match taken_since {
                        Some(since) => tracing::info!(
                            client_id = %inner.client_id,
                            held_for = ?since.elapsed(),
                            "NATS Streaming session open again: the other client let go of our client id"
                        ),
                        None => {
                            tracing::info!(client_id = %inner.client_id, "NATS Streaming session open again")
                        }
                    }
                    inner.session.send_replace(Some(session));
                    break;
                }
                Err(e) => {
                    let error = crate::telemetry::ErrorChain(&e).to_string();
                    if matches!(e, StreamingError::ClientIdTaken(_)) {
                        // Once while it lasts, not at every attempt.
                        if taken_since.is_none() {
                            taken_since = Some(std::time::Instant::now());
                            tracing::error!(
                                client_id = %inner.client_id,
                                "another client holds our NATS Streaming client id (it may have closed our session: the broker does not authenticate clients; keep it unreachable to untrusted ones); not ready until it lets go, retrying every {MAX_REOPEN_PAUSE:?} at most"
                            );
                        } else {
                            tracing::debug!(%error, ?pause, "our client id is still held by another client");
                        }
                    } else {
                        tracing::warn!(%error, ?pause, "cannot open a NATS Streaming session yet");
                    }
                    *inner.reopen_error.lock().expect("reopen error lock") = Some(error);
                }
            }
            tokio::select! {
                _ = inner.closed.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX_REOPEN_PAUSE);
        }
    }
}

/// Answers the server's heartbeats (empty requests) until the session is lost. Dropping the
/// subscription then makes the server's next heartbeat fail, so it forgets that session.
async fn answer_heartbeats(
    client: async_nats::Client,
    mut heartbeats: async_nats::Subscriber,
    lost: CancellationToken,
) {
    loop {
        let heartbeat = tokio::select! {
            _ = lost.cancelled() => return,
            heartbeat = heartbeats.next() => heartbeat,
        };
        let Some(heartbeat) = heartbeat else { return };
        if let Some(reply) = heartbeat.reply
            && let Err(e) = client.publish(reply, Bytes::new()).await
        {
            tracing::debug!(error = %e, "cannot answer a NATS Streaming heartbeat");
        }
    }
}

/// Hands every `PubAck` to the publish waiting for its guid.
async fn match_acks(session: Arc<Session>, mut acks: async_nats::Subscriber) {
    loop {
        let ack = tokio::select! {
            _ = session.lost.cancelled() => return,
            ack = acks.next() => ack,
        };
        let Some(ack) = ack else { return };
        let Ok(ack) = proto::PubAck::decode(ack.payload) else {
            tracing::warn!("undecodable publish acknowledgement; ignored");
            continue;
        };
        let waiting = session
            .pending
            .lock()
            .expect("pending lock")
            .remove(&ack.guid);
        if let Some(waiting) = waiting {
            let _ = waiting.send(if ack.error.is_empty() {
                Ok(())
            } else {
                Err(ack.error)
            });
        }
    }
}

enum Ping {
    Alive,
    /// The server answered that it no longer knows this session.
    Ended(String),
    NoAnswer(String),
}

async fn ping(client: &async_nats::Client, session: &Session, timeout: Duration) -> Ping {
    let ping = proto::Ping {
        conn_id: session.conn_id.clone(),
    };
    match request_decoded::<proto::PingResponse>(
        client,
        &session.subjects.ping_requests,
        ping.encode_to_vec(),
        timeout,
    )
    .await
    {
        Ok(answer) if answer.error.is_empty() => Ping::Alive,
        Ok(answer) => Ping::Ended(answer.error),
        Err(e) => Ping::NoAnswer(crate::telemetry::ErrorChain(&e).to_string()),
    }
}

/// Pings every `interval`; marks the session lost when the server says it ended it, or once
/// `max_out` pings in a row went unanswered.
async fn keep_pinging(
    client: async_nats::Client,
    session: Arc<Session>,
    interval: Duration,
    max_out: u32,
) {
    let mut out = 0;
    loop {
        tokio::select! {
            _ = session.lost.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match ping(&client, &session, PING_TIMEOUT.min(interval)).await {
            Ping::Alive => out = 0,
            Ping::Ended(error) => {
                tracing::warn!(%error, "the NATS Streaming server ended our session");
                session.lost.cancel();
                return;
            }
            Ping::NoAnswer(error) => {
                out += 1;
                tracing::debug!(%error, out, "a NATS Streaming ping went unanswered");
                if out >= max_out {
                    tracing::warn!(
                        pings = out,
                        "NATS Streaming does not answer pings; the session is lost"
                    );
                    session.lost.cancel();
                    return;
                }
            }
        }
    }
}

/// A request whose answer is the protobuf message `T`.
async fn request_decoded<T: prost::Message + Default>(
    client: &async_nats::Client,
    subject: &str,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<T, StreamingError> {
    let answer = client
        .send_request(
            subject.to_owned(),
            Request::new()
                .payload(payload.into())
                .timeout(Some(timeout)),
        )
        .await
        .map_err(StreamingError::Request)?;
    T::decode(answer.payload).map_err(StreamingError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_what_the_server_accepts() {
        assert!(valid_client_id("orders-depl-7d9f8c6b5-x2k4q"));
        assert!(valid_client_id("expiration_1"));
        assert!(!valid_client_id(""));
        assert!(!valid_client_id("orders.1"));
        assert!(!valid_client_id("orders depl"));
    }
}
