//! Delivering a stream's events as HTTP body frames: paced, split into pieces,
//! or cut off mid-stream.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, header};
use tokio::sync::Notify;

/// One body frame (one chunk of the chunked encoding).
pub(crate) struct Frame {
    bytes: Bytes,
    /// A piece of a larger event: the server yields before it, so that hyper
    /// writes the frame on its own instead of gathering the pieces.
    piece: bool,
}

impl Frame {
    /// A whole event in one frame.
    pub fn whole(event: Bytes) -> Self {
        Self { bytes: event, piece: false }
    }

    /// An event cut into frames of `piece` bytes (the last may be shorter).
    pub fn pieces(event: &Bytes, piece: usize) -> impl Iterator<Item = Self> + '_ {
        let piece = piece.max(1);
        (0..event.len())
            .step_by(piece)
            .map(move |start| Self { bytes: event.slice(start..event.len().min(start + piece)), piece: true })
    }
}

/// A `text/event-stream` response of `frames`, `delay` apart, cut (the
/// connection fails) before frame number `drop_after` when set, and held
/// before frame number `hold.0` until `hold.1` is notified.
pub(crate) fn response(
    frames: Vec<Frame>,
    delay: Duration,
    drop_after: Option<usize>,
    hold: Option<(usize, Arc<Notify>)>,
) -> Response {
    let drop_after = drop_after.unwrap_or(usize::MAX);
    let stream = futures_util::stream::iter(frames.into_iter().enumerate()).then(move |(i, frame)| {
        let hold = hold.clone();
        async move {
            if let Some((at, gate)) = hold
                && i == at
            {
                gate.notified().await;
            }
            if i > 0 {
                if frame.piece {
                    tokio::task::yield_now().await;
                }
                pause(delay).await;
            }
            if i >= drop_after {
                // Let the frames before the cut reach the wire first; hyper drops
                // its unflushed buffer when a body fails.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Err(std::io::Error::other("connection dropped by fault injection"));
            }
            Ok::<_, std::io::Error>(frame.bytes)
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
}

/// Sleeps, unless there is nothing to wait for: tokio's timer has millisecond
/// ticks, so even a zero sleep would add up to a millisecond.
pub(crate) async fn pause(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_event_in_order() {
        let event = Bytes::from_static(b"data: 0123456789\n\n");
        let pieces: Vec<Bytes> = Frame::pieces(&event, 5).map(|f| f.bytes).collect();
        assert_eq!(pieces.iter().map(Bytes::len).collect::<Vec<_>>(), [5, 5, 5, 3]);
        assert_eq!(pieces.concat(), event.to_vec());
        assert_eq!(Frame::pieces(&event, 0).count(), event.len(), "a zero piece size means one byte each");
    }
}
