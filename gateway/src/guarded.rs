//! A response body that holds values (an upstream node's in-flight count,
//! limit-conn's slot) until the body is finished or dropped.

use std::any::Any;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

pub struct Guarded<B> {
    inner: B,
    _guards: Vec<Box<dyn Any + Send + Sync>>,
}

impl<B> Guarded<B> {
    pub fn new(inner: B, guards: Vec<Box<dyn Any + Send + Sync>>) -> Self {
        Guarded {
            inner,
            _guards: guards,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Guarded<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
