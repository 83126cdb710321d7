//! `IndexerHttpFront`: the standalone indexer's HTTP/1.1 server, off the JavaScript thread.
//!
//! hyper 1 on a tokio current-thread runtime of its own thread accepts the connections, parses the
//! requests and reads their bodies (Content-Length or chunked, up to the route's limit), then queues
//! them. The first request queued while no batch is on its way calls the JavaScript callback through
//! one threadsafe function; that call takes every request queued by then (one batch: an id, flags,
//! method, request target, content type and body each, packed in one buffer). JavaScript answers
//! with `respond` (any number of answers in one call); the runtime completes the waiting hyper
//! responses. The index stays on the JavaScript thread: nothing of it is read here.
//!
//! A body over its limit is not read further: it is queued with the TOO_LARGE flag and an empty
//! body (JavaScript gives the 413 answer), its answer closes the connection, and what the client
//! still sends is read and discarded up to a bound, so that the answer reaches it before the
//! close. Malformed HTTP gets hyper's 400 (431 for a head too large) and the connection closes.
//! `close` stops accepting, lets every connection finish the request in flight (idle ones close at
//! once), then calls the callback a last time (kind CLOSED) and releases it: Node can exit.

// napi-rs registers module_exports hooks outside `cfg(test)`: in a test build nothing calls them.
#![cfg_attr(test, allow(dead_code))]

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{
    ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode,
};
use napi_derive::napi;
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// Request flag: the body went over the route's limit (the body handed over is empty).
const TOO_LARGE: u32 = 1;
/// Request flag: the request has a Content-Type header.
const HAS_CONTENT_TYPE: u32 = 2;
/// Request flag: the Content-Type is exactly `application/json` (the common one).
const CONTENT_TYPE_JSON: u32 = 4;
/// Request flags: the method is GET (1), POST (2) or HEAD (3) in these bits; 0 another.
const METHOD_SHIFT: u32 = 3;
/// Callback kinds: a batch of requests, or the last call after `close`.
const KIND_BATCH: u32 = 0;
const KIND_CLOSED: u32 = 1;
/// u32 words per request in a batch's meta array: id, flags, then the end offsets of the method,
/// the request target, the content type and the body in the batch's buffer (each starts where
/// the previous ends; the first at the previous request's body end, or 0).
const META_WORDS: usize = 6;
/// u32 words per answer in `respond`'s meta array: id, status, then the byte lengths of its head
/// lines and of its body, which follow the previous answer's in `respond`'s buffer.
const ANSWER_WORDS: usize = 4;
/// A batch's buffer holds at most this many bytes (at least one request): offsets stay u32.
const BATCH_BYTES: usize = 1 << 30;
/// Largest body limit (bytes): a body and its batch's offsets stay within u32.
const LIMIT_MAX: f64 = (1u64 << 30) as f64;
/// What is read and discarded of a refused body after its 413 (bytes), so that the answer is not
/// lost to a reset; past it the connection is closed at once.
const DRAIN_MAX: usize = 64 << 20;
/// The wait for a request head, idle keep-alive time included, as node:http's headersTimeout.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// After `close`, connections still busy this long are dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(30);

type Body = Full<Bytes>;

/// One request read by the runtime, waiting for JavaScript.
struct Pending {
    id: u32,
    flags: u32,
    method: hyper::Method,
    target: String,
    content_type: Option<HeaderValue>,
    body: Vec<Bytes>,
    body_len: usize,
}

/// One answer from JavaScript.
struct Answer {
    status: u16,
    /// Head lines (`name: value\r\n`) then the body.
    text: Bytes,
    head_len: usize,
}

/// What the runtime's tasks and the JavaScript thread share.
struct Shared {
    /// Requests for JavaScript: a lock-free queue, so that a connection task never waits for the
    /// JavaScript thread (nor the other way round) on a lock.
    queue: std::sync::mpsc::Sender<Pending>,
    /// A batch call is on its way to JavaScript: requests queued meanwhile go with it.
    scheduled: AtomicBool,
    /// The threadsafe function refused a call (Node is shutting down): requests are answered 503.
    dead: AtomicBool,
    /// The requests waiting for an answer (used on the runtime's thread only).
    waiters: Mutex<HashMap<u32, oneshot::Sender<Answer>>>,
    next_id: AtomicU32,
    query_limit: usize,
    body_limit: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Completes a waiting request (nothing when its client is gone).
    fn complete(&self, id: u32, answer: Answer) {
        if let Some(tx) = lock(&self.waiters).remove(&id) {
            let _ = tx.send(answer);
        }
    }
}

/// The batch callback's arguments: kind, meta, buffer.
type BatchArgs = FnArgs<(u32, Uint32Array, Buffer)>;

enum Event {
    Batch,
    Closed,
}

type Tsfn = ThreadsafeFunction<Event, Unknown<'static>, BatchArgs, Status, false>;

/// Packs requests into the callback's meta words and buffer.
fn size(p: &Pending) -> usize {
    p.method.as_str().len()
        + p.target.len()
        + p.content_type.as_ref().map_or(0, |c| c.len())
        + p.body_len
}

/// The JavaScript thread's end of the queue: takes one batch (at most BATCH_BYTES, at least one
/// request); a request that did not fit is carried to the next call, which it asks for.
struct Taker {
    queue: std::sync::mpsc::Receiver<Pending>,
    carry: Option<Pending>,
    shared: Arc<Shared>,
    again: mpsc::UnboundedSender<()>,
}

impl Taker {
    fn take(&mut self) -> Vec<Pending> {
        // cleared before draining: a request queued from here on either is drained below or
        // schedules the next call itself
        self.shared.scheduled.store(false, Ordering::SeqCst);
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        if let Some(p) = self.carry.take() {
            bytes += size(&p);
            batch.push(p);
        }
        while let Ok(p) = self.queue.try_recv() {
            let n = size(&p);
            if !batch.is_empty() && bytes + n > BATCH_BYTES {
                self.carry = Some(p);
                break;
            }
            bytes += n;
            batch.push(p);
        }
        if self.carry.is_some() && !self.shared.scheduled.swap(true, Ordering::SeqCst) {
            let _ = self.again.send(());
        }
        batch
    }
}

fn pack(batch: Vec<Pending>) -> (Vec<u32>, Vec<u8>) {
    let total: usize = batch.iter().map(size).sum();
    let mut data = Vec::with_capacity(total);
    let mut meta = Vec::with_capacity(batch.len() * META_WORDS);
    for p in batch {
        data.extend_from_slice(p.method.as_str().as_bytes());
        let m_end = data.len() as u32;
        data.extend_from_slice(p.target.as_bytes());
        let t_end = data.len() as u32;
        if let Some(c) = &p.content_type {
            data.extend_from_slice(c.as_bytes());
        }
        let c_end = data.len() as u32;
        for chunk in &p.body {
            data.extend_from_slice(chunk);
        }
        let b_end = data.len() as u32;
        meta.extend_from_slice(&[p.id, p.flags, m_end, t_end, c_end, b_end]);
    }
    (meta, data)
}

/// The runtime side: the threadsafe function and the channel that asks for another batch call.
struct Ctx {
    shared: Arc<Shared>,
    tsfn: Tsfn,
    active: AtomicUsize,
    idle: Notify,
}

impl Ctx {
    /// Calls JavaScript for a batch. When the call cannot be queued (Node is shutting down), the
    /// requests from then on are answered 503 at once (those queued end with their connection).
    fn call_batch(&self) {
        let status = self
            .tsfn
            .call(Event::Batch, ThreadsafeFunctionCallMode::NonBlocking);
        if status != Status::Ok {
            self.shared.dead.store(true, Ordering::SeqCst);
        }
    }
}

/// Reads a request body up to `limit` bytes: its chunks and length, or None when it goes over
/// (the rest is then discarded by a task of its own). Err: the body could not be read.
async fn read_body(
    mut body: Incoming,
    limit: usize,
) -> std::result::Result<Option<(Vec<Bytes>, usize)>, hyper::Error> {
    if body.size_hint().lower() > limit as u64 {
        tokio::spawn(drain(body));
        return Ok(None);
    }
    let mut chunks = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len();
            if len > limit {
                tokio::spawn(drain(body));
                return Ok(None);
            }
            if !data.is_empty() {
                chunks.push(data);
            }
        }
    }
    Ok(Some((chunks, len)))
}

/// Reads and discards what is left of a refused body, up to DRAIN_MAX bytes.
async fn drain(mut body: Incoming) {
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > DRAIN_MAX {
                return;
            }
        }
    }
}

fn plain(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

/// The hyper response of an answer: its status, head lines, content-length and body.
fn response(a: Answer, close: bool) -> Response<Body> {
    let head = a.text.get(..a.head_len).unwrap_or_default();
    let body = a.text.slice(a.head_len.min(a.text.len())..);
    let len = body.len();
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = r.headers_mut();
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            if name == CONTENT_TYPE && value == "application/json" {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            } else {
                headers.append(name, value);
            }
        }
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// One request: read it, queue it for JavaScript, wait for the answer.
async fn serve(
    ctx: Arc<Ctx>,
    req: Request<Incoming>,
) -> std::result::Result<Response<Body>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let target = match parts.uri.path_and_query() {
        Some(pq) if parts.uri.scheme().is_none() => pq.as_str().to_owned(),
        _ => parts.uri.to_string(),
    };
    let path = target.split('?').next().unwrap_or("");
    let limit = if path == "/query" || path == "/query_by_hash" {
        ctx.shared.query_limit
    } else {
        ctx.shared.body_limit
    };
    let content_type = parts.headers.get(CONTENT_TYPE).cloned();
    let mut flags = match &content_type {
        Some(c) if c.as_bytes() == b"application/json" => HAS_CONTENT_TYPE | CONTENT_TYPE_JSON,
        Some(_) => HAS_CONTENT_TYPE,
        None => 0,
    };
    flags |= match parts.method {
        hyper::Method::GET => 1,
        hyper::Method::POST => 2,
        hyper::Method::HEAD => 3,
        _ => 0,
    } << METHOD_SHIFT;
    let (chunks, body_len) = match read_body(body, limit).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            flags |= TOO_LARGE;
            (Vec::new(), 0)
        }
        // a malformed body (a bad chunk size, a short read): 400, as for a malformed head
        Err(_) => {
            let mut r = plain(StatusCode::BAD_REQUEST);
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return Ok(r);
        }
    };
    if ctx.shared.dead.load(Ordering::SeqCst) {
        return Ok(plain(StatusCode::SERVICE_UNAVAILABLE));
    }
    let id = ctx.shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    lock(&ctx.shared.waiters).insert(id, tx);
    let queued = ctx.shared.queue.send(Pending {
        id,
        flags,
        method: parts.method,
        target,
        content_type,
        body: chunks,
        body_len,
    });
    if queued.is_err() {
        lock(&ctx.shared.waiters).remove(&id);
        return Ok(plain(StatusCode::SERVICE_UNAVAILABLE));
    }
    if !ctx.shared.scheduled.swap(true, Ordering::SeqCst) {
        ctx.call_batch();
    }
    Ok(match rx.await {
        Ok(a) => response(a, flags & TOO_LARGE != 0),
        Err(_) => plain(StatusCode::SERVICE_UNAVAILABLE),
    })
}

/// Resolves once `close` was called (or the front is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One connection, until it ends or, after `close`, finishes its request in flight.
async fn connection(ctx: Arc<Ctx>, stream: tokio::net::TcpStream, mut stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| serve(svc_ctx.clone(), req));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    if ctx.active.fetch_sub(1, Ordering::AcqRel) == 1 {
        ctx.idle.notify_waiters();
    }
}

/// The runtime's main task: accept until `close`, then wait for the connections to finish.
async fn run(
    ctx: Arc<Ctx>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
    mut answers: mpsc::UnboundedReceiver<Vec<(u32, Answer)>>,
    mut again: mpsc::UnboundedReceiver<()>,
) {
    // answers from JavaScript: one wake of this thread per `respond` call
    let shared = ctx.shared.clone();
    tokio::spawn(async move {
        while let Some(list) = answers.recv().await {
            for (id, a) in list {
                shared.complete(id, a);
            }
        }
    });
    // a batch left requests queued: call JavaScript again
    let again_ctx = ctx.clone();
    tokio::spawn(async move {
        while again.recv().await.is_some() {
            again_ctx.call_batch();
        }
    });
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    ctx.active.fetch_add(1, Ordering::AcqRel);
                    tokio::spawn(connection(ctx.clone(), stream, stop.clone()));
                }
                // out of file descriptors and the like: wait a little instead of spinning
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
    drop(listener);
    let wait_idle = async {
        loop {
            let idle = ctx.idle.notified();
            if ctx.active.load(Ordering::Acquire) == 0 {
                break;
            }
            idle.await;
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, wait_idle).await;
}

/// The standalone indexer's native HTTP front (see the module's doc).
#[napi]
pub struct IndexerHttpFront {
    answers: mpsc::UnboundedSender<Vec<(u32, Answer)>>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

/// A bind failure worded as node:http's (`listen EADDRINUSE: address already in use host:port`).
fn listen_error(host: &str, port: u32, e: std::io::Error) -> Error {
    use std::io::ErrorKind;
    let what = match e.kind() {
        ErrorKind::AddrInUse => Some(("EADDRINUSE", "address already in use")),
        ErrorKind::AddrNotAvailable => Some(("EADDRNOTAVAIL", "address not available")),
        ErrorKind::PermissionDenied => Some(("EACCES", "permission denied")),
        _ => None,
    };
    let message = match what {
        Some((code, text)) => format!("listen {code}: {text} {host}:{port}"),
        None => format!("listen {host}:{port}: {e}"),
    };
    Error::new(Status::GenericFailure, message)
}

fn limit_arg(name: &str, v: f64) -> Result<usize> {
    if (0.0..=LIMIT_MAX).contains(&v) {
        Ok(v as usize)
    } else {
        Err(Error::new(
            Status::InvalidArg,
            format!("{name} must be within 0..2^30"),
        ))
    }
}

#[napi]
impl IndexerHttpFront {
    /// Binds host:port (port 0: any free one) and starts serving: `onBatch(kind, meta, data)` is
    /// called on the JavaScript thread with each batch of requests (kind 0), and once after
    /// `close` when the last connection has finished (kind 1).
    #[napi(constructor, catch_unwind)]
    pub fn new(
        host: String,
        port: u32,
        query_body_limit: f64,
        body_limit: f64,
        on_batch: Function<'_, BatchArgs, Unknown<'static>>,
    ) -> Result<Self> {
        let query_limit = limit_arg("queryBodyLimit", query_body_limit)?;
        let body_limit = limit_arg("bodyLimit", body_limit)?;
        let port16 = u16::try_from(port)
            .map_err(|_| Error::new(Status::InvalidArg, "port must be within 0..65535"))?;
        let io_err = |e: std::io::Error| listen_error(&host, port, e);
        let not_found = || {
            Error::new(
                Status::GenericFailure,
                format!("getaddrinfo ENOTFOUND {host}"),
            )
        };
        let addr = (host.as_str(), port16)
            .to_socket_addrs()
            .map_err(|_| not_found())?
            .next()
            .ok_or_else(not_found)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .thread_name("dynamo-kv-http")
            .build()
            .map_err(io_err)?;
        let listener = {
            let _enter = runtime.enter();
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(io_err)?;
            socket.set_reuseaddr(true).map_err(io_err)?;
            socket.bind(addr).map_err(io_err)?;
            socket.listen(511).map_err(io_err)?
        };
        let local = listener.local_addr().map_err(io_err)?;
        let (queue_tx, queue_rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            queue: queue_tx,
            scheduled: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            waiters: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(0),
            query_limit,
            body_limit,
        });
        let (again_tx, again_rx) = mpsc::unbounded_channel::<()>();
        let mut taker = Taker {
            queue: queue_rx,
            carry: None,
            shared: shared.clone(),
            again: again_tx,
        };
        let tsfn: Tsfn = on_batch
            .build_threadsafe_function::<Event>()
            .callee_handled::<false>()
            .build_callback(move |ctx: ThreadsafeCallContext<Event>| {
                let (kind, batch) = match ctx.value {
                    Event::Closed => (KIND_CLOSED, Vec::new()),
                    Event::Batch => (KIND_BATCH, taker.take()),
                };
                let (meta, data) = pack(batch);
                Ok(FnArgs::from((
                    kind,
                    Uint32Array::new(meta),
                    Buffer::from(data),
                )))
            })?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (answers_tx, answers_rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(Ctx {
            shared,
            tsfn,
            active: AtomicUsize::new(0),
            idle: Notify::new(),
        });
        let thread = std::thread::Builder::new()
            .name("dynamo-kv-http".into())
            .spawn(move || {
                runtime.block_on(run(ctx.clone(), listener, stop_rx, answers_rx, again_rx));
                // the last call, then the threadsafe function is released (with the runtime's
                // tasks and this context): nothing keeps Node's loop alive any more
                let _ = ctx
                    .tsfn
                    .call(Event::Closed, ThreadsafeFunctionCallMode::NonBlocking);
                drop(runtime);
                drop(ctx);
            })
            .map_err(io_err)?;
        Ok(Self {
            answers: answers_tx,
            stop: stop_tx,
            thread: Some(thread),
            addr: local,
        })
    }

    /// The bound address.
    #[napi(getter)]
    pub fn address(&self) -> String {
        self.addr.ip().to_string()
    }

    /// `IPv4` or `IPv6`.
    #[napi(getter)]
    pub fn family(&self) -> String {
        if self.addr.is_ipv4() { "IPv4" } else { "IPv6" }.to_owned()
    }

    /// The bound port.
    #[napi(getter)]
    pub fn port(&self) -> u32 {
        u32::from(self.addr.port())
    }

    /// Answers requests: `meta` holds (id, status, head bytes, body bytes) per answer, `data` each
    /// answer's head lines (`name: value\r\n`) then its body, one answer after the other. Unknown
    /// ids (their client is gone) are skipped.
    #[napi(catch_unwind)]
    pub fn respond(&self, meta: Uint32Array, data: &[u8]) -> Result<()> {
        if !meta.len().is_multiple_of(ANSWER_WORDS) {
            return Err(Error::new(
                Status::InvalidArg,
                "meta must hold 4 words per answer",
            ));
        }
        let n = meta.len() / ANSWER_WORDS;
        let total: usize = meta
            .chunks_exact(ANSWER_WORDS)
            .map(|m| m[2] as usize + m[3] as usize)
            .sum();
        let all = Bytes::copy_from_slice(
            data.get(..total)
                .ok_or_else(|| Error::new(Status::InvalidArg, "data is shorter than meta says"))?,
        );
        let mut list = Vec::with_capacity(n);
        let mut off = 0usize;
        for m in meta.chunks_exact(ANSWER_WORDS) {
            let head_len = m[2] as usize;
            let end = off + head_len + m[3] as usize;
            let status = u16::try_from(m[1])
                .ok()
                .filter(|s| (100..1000).contains(s))
                .unwrap_or(500);
            list.push((
                m[0],
                Answer {
                    status,
                    text: all.slice(off..end),
                    head_len,
                },
            ));
            off = end;
        }
        // after close the runtime is gone: the answers have no one to go to
        let _ = self.answers.send(list);
        Ok(())
    }

    /// Stops accepting; connections finish their request in flight. The callback is then called
    /// once with kind 1 (call `join` then).
    #[napi]
    pub fn close(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for the server's thread to end (after the kind 1 call, it is ending or gone).
    #[napi]
    pub fn join(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, head: &str, body: &str, head_len: usize) -> Answer {
        Answer {
            status,
            text: Bytes::from(format!("{head}{body}")),
            head_len,
        }
    }

    #[test]
    fn an_answer_becomes_its_response() {
        let head = "content-type: application/json\r\nallow: GET,HEAD\r\n";
        let r = response(answer(405, head, "{}", head.len()), false);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()["allow"], "GET,HEAD");
        assert_eq!(r.headers()[CONTENT_LENGTH], "2");
        assert!(r.headers().get(CONNECTION).is_none());
        let closing = response(answer(413, "", "too large", 0), true);
        assert_eq!(closing.headers()[CONNECTION], "close");
        assert_eq!(closing.headers()[CONTENT_LENGTH], "9");
    }

    #[test]
    fn malformed_answers_never_panic() {
        // lines without a colon, bad names and values, a head longer than the text, odd statuses
        let head = "no colon\r\n: empty name\r\nbad name: v\r\nx-ok: \u{7f}\r\n\r\n";
        let r = response(answer(200, head, "body", head.len()), false);
        assert_eq!(r.headers()[CONTENT_LENGTH], "4");
        let r = response(answer(1000, "", "", 0), false);
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let r = response(answer(204, "a: b", "", 999), false);
        assert_eq!(r.headers()[CONTENT_LENGTH], "0");
    }

    #[test]
    fn a_batch_is_packed_end_to_end() {
        let p = |id,
                 method: hyper::Method,
                 target: &str,
                 ct: Option<&'static str>,
                 body: &[&'static str]| Pending {
            id,
            flags: 0,
            method,
            target: target.to_owned(),
            content_type: ct.map(HeaderValue::from_static),
            body: body
                .iter()
                .map(|b| Bytes::from_static(b.as_bytes()))
                .collect(),
            body_len: body.iter().map(|b| b.len()).sum(),
        };
        let (meta, data) = pack(vec![
            p(
                7,
                hyper::Method::POST,
                "/query",
                Some("application/json"),
                &["{\"a\"", ":1}"],
            ),
            p(8, hyper::Method::GET, "/health", None, &[]),
        ]);
        assert_eq!(data, b"POST/queryapplication/json{\"a\":1}GET/health");
        assert_eq!(meta, vec![7, 0, 4, 10, 26, 33, 8, 0, 36, 43, 43, 43]);
    }
}
