//! The Watch service on gRPC, written out rather than generated: its
//! responses are [`WatchOut`]s, whose shared events go on the wire as bytes
//! encoded once for every watch that receives them (tonic's generated
//! server would need each response as a whole prost message).

use std::convert::Infallible;
use std::sync::Arc;

use cairn_proto::etcdserverpb::{WatchRequest, WatchResponse};
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::{ProstCodec, ProstDecoder};

use super::watch::{WatchService, WatchStream};
use crate::watch::WatchOut;

const METHOD: &str = "/etcdserverpb.Watch/Watch";

/// `etcdserverpb.Watch` for the client port's router.
#[derive(Clone)]
pub struct WatchServer {
    svc: Arc<WatchService>,
    /// Largest request message accepted.
    max_decoding: usize,
}

impl WatchServer {
    pub fn new(svc: Arc<WatchService>, max_decoding: usize) -> Self {
        WatchServer { svc, max_decoding }
    }
}

impl NamedService for WatchServer {
    const NAME: &'static str = "etcdserverpb.Watch";
}

impl<B> Service<http::Request<B>> for WatchServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != METHOD {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let (svc, max) = (self.svc.clone(), self.max_decoding);
        Box::pin(async move {
            let mut grpc =
                Grpc::new(WatchCodec).apply_max_message_size_config(Some(max), Some(usize::MAX));
            Ok(grpc.streaming(Method(svc), req).await)
        })
    }
}

struct Method(Arc<WatchService>);

impl StreamingService<WatchRequest> for Method {
    type Response = WatchOut;
    type ResponseStream = WatchStream;
    type Future = BoxFuture<Response<WatchStream>, Status>;

    fn call(&mut self, req: Request<Streaming<WatchRequest>>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            // clientv3's WithRequireLeader.
            let require_leader = req
                .metadata()
                .get("hasleader")
                .is_some_and(|v| v.as_bytes() == b"true");
            let md = req.metadata().clone();
            svc.open(req.into_inner(), require_leader, &md)
                .map(Response::new)
        })
    }
}

/// Requests decode with prost; responses encode through [`WatchOut::encode`].
#[derive(Clone, Copy)]
struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = WatchOut;
    type Decode = WatchRequest;
    type Encoder = OutEncoder;
    type Decoder = ProstDecoder<WatchRequest>;

    fn encoder(&mut self) -> OutEncoder {
        OutEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<WatchResponse, WatchRequest>::raw_decoder(BufferSettings::default())
    }
}

struct OutEncoder;

impl Encoder for OutEncoder {
    type Item = WatchOut;
    type Error = Status;

    fn encode(&mut self, item: WatchOut, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf);
        Ok(())
    }
}
