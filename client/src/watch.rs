//! Watch: a [`Watcher`] is one gRPC Watch stream on one member, carrying the
//! watch it was opened with and any further ones added with
//! [`Watcher::create`]. A broken stream is an error, never silently resumed:
//! [`ResumingWatcher`] is the explicit helper that reopens the watch on another
//! member from the revision after the last one it delivered (APISIX's rule).

use std::collections::HashMap;

use cairn_proto::etcdserverpb::watch_client::WatchClient;
use cairn_proto::etcdserverpb::watch_create_request::FilterType;
use cairn_proto::etcdserverpb::watch_request::RequestUnion;
use cairn_proto::etcdserverpb::{
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::call::Kind;
use crate::{Client, Error, KeyRange, Result};

/// Options of [`Client::watch`]; fields map to etcd's `WatchCreateRequest`.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    pub range: KeyRange,
    /// First revision to deliver (0 = changes after the current revision).
    pub start_revision: i64,
    pub prev_kv: bool,
    /// Filter out PUT events.
    pub no_put: bool,
    /// Filter out DELETE events.
    pub no_delete: bool,
    /// Ask for periodic empty responses while idle.
    pub progress_notify: bool,
    /// Let the server split large responses (the client reassembles them).
    pub fragment: bool,
    /// Client-chosen watch ID (0 = the server assigns one).
    pub watch_id: i64,
    /// Send `hasleader: true` (clientv3's `WithRequireLeader`): a member without
    /// a leader refuses or closes the stream.
    pub require_leader: bool,
}

impl WatchOptions {
    /// Every key with the given key as prefix.
    pub fn prefix() -> Self {
        Self {
            range: KeyRange::Prefix,
            ..Default::default()
        }
    }
}

pub(crate) fn create_request(key: Vec<u8>, o: &WatchOptions) -> WatchCreateRequest {
    let mut filters = Vec::new();
    if o.no_put {
        filters.push(FilterType::Noput as i32);
    }
    if o.no_delete {
        filters.push(FilterType::Nodelete as i32);
    }
    WatchCreateRequest {
        range_end: o.range.range_end(&key),
        key,
        start_revision: o.start_revision,
        progress_notify: o.progress_notify,
        filters,
        prev_kv: o.prev_kv,
        watch_id: o.watch_id,
        fragment: o.fragment,
    }
}

fn create(c: WatchCreateRequest) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(c)),
    }
}

/// Joins fragmented responses (`fragment: true` ... then one with `false`) of
/// each watch into one response, as clientv3 does.
#[derive(Debug, Default)]
pub(crate) struct Reassembler {
    partial: HashMap<i64, WatchResponse>,
}

impl Reassembler {
    /// Returns the response to hand out, or `None` while fragments are pending.
    pub(crate) fn push(&mut self, r: WatchResponse) -> Option<WatchResponse> {
        if r.fragment {
            match self.partial.get_mut(&r.watch_id) {
                Some(p) => p.events.extend(r.events),
                None => {
                    self.partial.insert(r.watch_id, r);
                }
            }
            return None;
        }
        match self.partial.remove(&r.watch_id) {
            None => Some(r),
            Some(mut p) => {
                p.events.extend(r.events);
                p.header = r.header;
                p.fragment = false;
                p.canceled = r.canceled;
                p.compact_revision = r.compact_revision;
                p.cancel_reason = r.cancel_reason;
                Some(p)
            }
        }
    }
}

/// Where a watch must restart so that nothing is skipped or repeated: after
/// the last event delivered, or after the header revision of a progress
/// notification of this watch (the server had sent everything up to it). The
/// header of an event response is not used: etcd may put the current store
/// revision there while a backlog of older events is still being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResumePoint {
    pub(crate) next_rev: i64,
}

impl ResumePoint {
    pub(crate) fn observe(&mut self, watch_id: i64, r: &WatchResponse) {
        if r.watch_id != watch_id || r.canceled || r.created {
            return;
        }
        let rev = match r.events.last() {
            Some(ev) => ev.kv.as_ref().map_or(0, |kv| kv.mod_revision),
            None => r.header.as_ref().map_or(0, |h| h.revision),
        };
        self.next_rev = self.next_rev.max(rev + 1);
    }
}

struct Opened {
    tx: mpsc::Sender<WatchRequest>,
    inbound: Streaming<WatchResponse>,
    created: WatchResponse,
}

/// One open Watch stream on one member.
pub struct Watcher {
    client: Client,
    member: usize,
    tx: mpsc::Sender<WatchRequest>,
    inbound: Streaming<WatchResponse>,
    created: WatchResponse,
    reassembler: Reassembler,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("endpoint", &self.endpoint())
            .field("watch_id", &self.created.watch_id)
            .finish()
    }
}

impl Client {
    /// Opens a Watch stream (on the pinned member, failing over like a read
    /// while the stream cannot be opened) and creates one watch on it. Returns
    /// once the server has answered the create (see [`Watcher::created`]).
    pub async fn watch(&self, key: impl Into<Vec<u8>>, opts: WatchOptions) -> Result<Watcher> {
        let first = create(create_request(key.into(), &opts));
        let require_leader = opts.require_leader;
        let (o, member) = self
            .call_indexed(Kind::Read, |ch| {
                self.open_watch(ch, first.clone(), require_leader)
            })
            .await?;
        Ok(Watcher {
            client: self.clone(),
            member,
            tx: o.tx,
            inbound: o.inbound,
            created: o.created,
            reassembler: Reassembler::default(),
        })
    }

    /// Like [`Client::watch`], but the result reopens the watch on another
    /// member when the stream breaks (see [`ResumingWatcher`]).
    pub async fn watch_resuming(
        &self,
        key: impl Into<Vec<u8>>,
        opts: WatchOptions,
    ) -> Result<ResumingWatcher> {
        let key = key.into();
        let w = self.watch(key.clone(), opts.clone()).await?;
        let next_rev = if opts.start_revision > 0 {
            opts.start_revision
        } else {
            w.created.header.as_ref().map_or(0, |h| h.revision) + 1
        };
        Ok(ResumingWatcher {
            client: self.clone(),
            key,
            watch_id: w.watch_id(),
            opts,
            point: ResumePoint { next_rev },
            watcher: Some(w),
            resumes: 0,
        })
    }

    fn open_watch(
        &self,
        ch: Channel,
        first: WatchRequest,
        require_leader: bool,
    ) -> impl std::future::Future<Output = std::result::Result<tonic::Response<Opened>, Status>>
    {
        let (tx, rx) = mpsc::channel(64);
        tx.try_send(first).expect("fresh channel has room");
        let mut req = self.request(ReceiverStream::new(rx));
        if require_leader {
            req.metadata_mut()
                .insert("hasleader", MetadataValue::from_static("true"));
        }
        let mut wc = WatchClient::new(ch)
            .max_decoding_message_size(self.inner.opts.max_decoding_message_size);
        async move {
            let mut inbound = wc.watch(req).await?.into_inner();
            let created = inbound.message().await?.ok_or_else(|| {
                Status::unavailable("watch stream ended before the create was answered")
            })?;
            Ok(tonic::Response::new(Opened {
                tx,
                inbound,
                created,
            }))
        }
    }
}

/// A failed stream as a client error: a status the server sent (e.g.
/// `etcdserver: no leader` under `require_leader`) keeps its code and exact
/// message; a transport failure (reset, connection lost) is
/// [`Error::Unavailable`]. Either way the stream is gone.
fn stream_error(url: &str, s: Status) -> Error {
    // tonic keeps the transport error as the source of a locally made status;
    // one the server sent in its trailers has none.
    if std::error::Error::source(&s).is_none() {
        Error::Status {
            code: s.code(),
            message: s.message().to_string(),
        }
    } else {
        Error::Unavailable(format!(
            "watch stream on {url} broke: {:?}: {}",
            s.code(),
            s.message()
        ))
    }
}

impl Watcher {
    /// The server's answer to the create this watcher was opened with
    /// (`created: true`; also `canceled: true` if the server refused it).
    pub fn created(&self) -> &WatchResponse {
        &self.created
    }

    /// The ID of the watch this watcher was opened with.
    pub fn watch_id(&self) -> i64 {
        self.created.watch_id
    }

    /// URL of the member this stream is on.
    pub fn endpoint(&self) -> &str {
        self.client.member_url(self.member)
    }

    /// The next response of any watch on this stream (created, events, progress,
    /// canceled), with fragments joined. An error means the stream is gone: it
    /// broke or ended ([`Error::Unavailable`]), or the server ended it with a
    /// status ([`Error::Status`], e.g. `Unavailable` / `etcdserver: no leader`).
    pub async fn next(&mut self) -> Result<WatchResponse> {
        loop {
            match self.inbound.message().await {
                Ok(Some(r)) => {
                    if let Some(r) = self.reassembler.push(r) {
                        return Ok(r);
                    }
                }
                Ok(None) => {
                    return Err(Error::Unavailable(format!(
                        "watch stream on {} ended",
                        self.endpoint()
                    )))
                }
                Err(s) => return Err(stream_error(self.endpoint(), s)),
            }
        }
    }

    async fn send(&self, req: RequestUnion) -> Result<()> {
        self.tx
            .send(WatchRequest {
                request_union: Some(req),
            })
            .await
            .map_err(|_| {
                Error::Unavailable(format!("watch stream on {} is closed", self.endpoint()))
            })
    }

    /// Adds another watch to this stream; its `created` response (with its ID)
    /// arrives through [`Watcher::next`].
    pub async fn create(&self, key: impl Into<Vec<u8>>, opts: WatchOptions) -> Result<()> {
        self.send(RequestUnion::CreateRequest(create_request(
            key.into(),
            &opts,
        )))
        .await
    }

    /// Cancels this watcher's watch; the `canceled` response arrives through
    /// [`Watcher::next`], and no event of the watch follows it.
    pub async fn cancel(&self) -> Result<()> {
        self.cancel_id(self.watch_id()).await
    }

    /// Cancels the watch `watch_id` of this stream.
    pub async fn cancel_id(&self, watch_id: i64) -> Result<()> {
        self.send(RequestUnion::CancelRequest(WatchCancelRequest { watch_id }))
            .await
    }

    /// Asks for a progress response (`watch_id` -1, no events), which arrives
    /// through [`Watcher::next`].
    pub async fn request_progress(&self) -> Result<()> {
        self.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
            .await
    }
}

/// One watch that survives its member: when the stream breaks (or the member
/// loses its leader under `require_leader`), the watch is created again on
/// another member from the revision after the last one delivered, so the
/// caller sees every event exactly once as long as that history is not
/// compacted (if it is, the `canceled` response with `compact_revision` is
/// handed out like any other).
#[derive(Debug)]
pub struct ResumingWatcher {
    client: Client,
    key: Vec<u8>,
    opts: WatchOptions,
    watch_id: i64,
    point: ResumePoint,
    watcher: Option<Watcher>,
    resumes: usize,
}

impl ResumingWatcher {
    /// The next response of the watch: events, progress notifications or a
    /// final `canceled`. The `created` responses of resumed streams are not
    /// handed out. Errors when no member would take the watch again within the
    /// client's retry budget (calling again retries), or when the server refused
    /// the stream for good.
    pub async fn next(&mut self) -> Result<WatchResponse> {
        loop {
            if self.watcher.is_none() {
                let mut o = self.opts.clone();
                o.start_revision = self.point.next_rev;
                let w = self.client.watch(self.key.clone(), o).await?;
                self.watch_id = w.watch_id();
                let refused = w.created().canceled.then(|| w.created().clone());
                self.watcher = Some(w);
                if let Some(r) = refused {
                    return Ok(r);
                }
            }
            let w = self.watcher.as_mut().expect("opened above");
            match w.next().await {
                Ok(r) => {
                    self.point.observe(self.watch_id, &r);
                    return Ok(r);
                }
                Err(e) if e.code() == tonic::Code::Unavailable => {
                    self.client.unpin(w.member);
                    self.watcher = None;
                    self.resumes += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The revision the watch would restart from now.
    pub fn next_revision(&self) -> i64 {
        self.point.next_rev
    }

    /// How many times the watch was reopened.
    pub fn resumes(&self) -> usize {
        self.resumes
    }

    /// URL of the member the current stream is on, if one is open.
    pub fn endpoint(&self) -> Option<&str> {
        self.watcher.as_ref().map(Watcher::endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::etcdserverpb::ResponseHeader;
    use cairn_proto::mvccpb::{Event, KeyValue};

    fn ev(rev: i64) -> Event {
        Event {
            kv: Some(KeyValue {
                key: format!("k{rev}").into_bytes(),
                mod_revision: rev,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn resp(id: i64, hrev: i64, revs: &[i64], fragment: bool) -> WatchResponse {
        WatchResponse {
            header: Some(ResponseHeader {
                revision: hrev,
                ..Default::default()
            }),
            watch_id: id,
            fragment,
            events: revs.iter().map(|r| ev(*r)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn create_request_maps_options() {
        let o = WatchOptions {
            range: KeyRange::Prefix,
            start_revision: 7,
            prev_kv: true,
            no_put: true,
            no_delete: true,
            progress_notify: true,
            fragment: true,
            watch_id: 3,
            require_leader: true,
        };
        let c = create_request(b"/apisix/".to_vec(), &o);
        assert_eq!(c.key, b"/apisix/");
        assert_eq!(c.range_end, b"/apisix0");
        assert_eq!(c.start_revision, 7);
        assert_eq!(c.filters, vec![0, 1]);
        assert!(c.prev_kv && c.progress_notify && c.fragment);
        assert_eq!(c.watch_id, 3);
        let c = create_request(b"k".to_vec(), &WatchOptions::default());
        assert!(c.range_end.is_empty() && c.filters.is_empty());
        let c = create_request(
            b"k".to_vec(),
            &WatchOptions {
                no_delete: true,
                ..Default::default()
            },
        );
        assert_eq!(c.filters, vec![FilterType::Nodelete as i32]);
    }

    #[test]
    fn reassembles_fragments_per_watch() {
        let mut r = Reassembler::default();
        assert!(r.push(resp(1, 9, &[5, 6], true)).is_none());
        // Another watch's whole response passes through in between.
        let other = r.push(resp(2, 9, &[5], false)).unwrap();
        assert_eq!(other.events.len(), 1);
        assert!(r.push(resp(1, 9, &[7], true)).is_none());
        let whole = r.push(resp(1, 9, &[8], false)).unwrap();
        let revs: Vec<i64> = whole
            .events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect();
        assert_eq!(revs, vec![5, 6, 7, 8]);
        assert!(!whole.fragment);
        assert_eq!(whole.watch_id, 1);
        // Nothing left over.
        assert_eq!(r.push(resp(1, 10, &[10], false)).unwrap().events.len(), 1);
    }

    #[test]
    fn resume_point_follows_events_and_progress_only() {
        let mut p = ResumePoint { next_rev: 5 };
        // Events: after the last one, not after the header (a backlog may be pending).
        p.observe(0, &resp(0, 100, &[5, 6], false));
        assert_eq!(p.next_rev, 7);
        // Progress notification of this watch: everything up to the header was sent.
        p.observe(0, &resp(0, 20, &[], false));
        assert_eq!(p.next_rev, 21);
        // Never backwards.
        p.observe(0, &resp(0, 10, &[], false));
        assert_eq!(p.next_rev, 21);
        // Other watches, stream-wide progress (-1), created and canceled: ignored.
        p.observe(0, &resp(1, 50, &[49], false));
        p.observe(0, &resp(-1, 50, &[], false));
        let mut c = resp(0, 50, &[], false);
        c.created = true;
        p.observe(0, &c);
        let mut c = resp(0, 50, &[], false);
        c.canceled = true;
        p.observe(0, &c);
        assert_eq!(p.next_rev, 21);
    }
}
