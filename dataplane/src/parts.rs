//! A body sent as up to three byte slices in order: an upstream's answer or a
//! client's request with one value replaced between two untouched slices of
//! the original (the model name), so nothing is copied.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

/// Up to three slices, sent in order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Parts(pub [Option<Bytes>; 3]);

impl Parts {
    pub fn whole(bytes: Bytes) -> Self {
        Parts([Some(bytes), None, None])
    }

    /// `original` with `range` replaced by `with`.
    pub fn splice(original: &Bytes, range: std::ops::Range<usize>, with: Bytes) -> Self {
        Parts([Some(original.slice(..range.start)), Some(with), Some(original.slice(range.end..))])
    }

    pub fn len(&self) -> usize {
        self.0.iter().flatten().map(Bytes::len).sum()
    }

    /// The bytes in one piece (copied when there is more than one part).
    pub fn contiguous(&self) -> Bytes {
        match &self.0 {
            [Some(one), None, None] => one.clone(),
            parts => {
                let mut out = BytesMut::with_capacity(self.len());
                parts.iter().flatten().for_each(|p| out.extend_from_slice(p));
                out.freeze()
            }
        }
    }
}

impl Body for Parts {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.iter_mut().find_map(Option::take).map(|part| Ok(Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len() as u64)
    }
}
