//! A connection's task: it writes what the calls queued, reads the
//! upstream's frames and hands each to the shared [`State`], one lock per
//! read, so that a reply that arrives whole wakes its caller once.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use h2::Reason;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    client::{ConnectionError, Shared, State, StreamError, CONNECTION_WINDOW, STREAM_WINDOW},
    frame::{self, Head, DEFAULT_MAX_FRAME, DEFAULT_WINDOW, HEADER_LEN},
    hpack::Decoder,
};

/// Room for two of the largest frames this client accepts.
const READ_BUFFER: usize = 2 * (HEADER_LEN + DEFAULT_MAX_FRAME);
/// The most that may wait to be written before the task stops reading (as
/// `h2` stops when its write buffer is full): a peer that sends frames
/// needing an answer (PING, SETTINGS) but reads none can make the
/// connection hold no more than this.
const MAX_BACKLOG: usize = 1 << 20;

pub(super) struct Driver<T> {
    io: T,
    shared: Arc<Shared>,
    /// Frames being written: `writing[written..]`.
    writing: Vec<u8>,
    written: usize,
    reader: Reader,
    /// Set once the connection has ended: write what is left, then stop.
    ending: bool,
}

/// The reading side: frames read and not yet handled, and the header
/// block being decoded.
struct Reader {
    /// `read[start..end]`.
    read: Box<[u8]>,
    start: usize,
    end: usize,
    decoder: Decoder,
    /// A header block that continues in CONTINUATION frames: its stream,
    /// whether it ends the stream, and the block so far.
    continuing: Option<(u32, bool)>,
    block: Vec<u8>,
    /// The largest header list (and header block) accepted.
    max_list: usize,
}

impl<T> Driver<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    /// Starts a connection on `io`: the preface and this client's
    /// settings are queued before any call's frames.
    pub(super) fn new(io: T, shared: Arc<Shared>, max_list: usize) -> Self {
        {
            let mut state = shared.lock();
            let out = &mut state.out;
            out.extend_from_slice(frame::PREFACE);
            frame::settings(
                out,
                &[
                    (frame::SETTINGS_ENABLE_PUSH, 0),
                    (frame::SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW as u32),
                ],
            );
            frame::window_update(out, 0, (CONNECTION_WINDOW - DEFAULT_WINDOW) as u32);
        }
        Self {
            io,
            shared,
            writing: Vec::with_capacity(4096),
            written: 0,
            reader: Reader {
                read: vec![0; READ_BUFFER].into_boxed_slice(),
                start: 0,
                end: 0,
                decoder: Decoder::new(max_list),
                continuing: None,
                block: Vec::new(),
                max_list,
            },
            ending: false,
        }
    }

    /// Writes what is queued; `Ready(Err)` when the connection broke.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.writing.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.io).poll_write(cx, &self.writing[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.writing.clear();
        self.written = 0;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// The connection ended: every call fails with `error`.
    fn end(&mut self, error: StreamError) {
        self.shared.stop_accepting();
        self.shared.lock().fail_all(error);
        self.ending = true;
    }
}

// === impl Reader ===

impl Reader {
    /// Handles every whole frame read so far.
    fn handle_frames(&mut self, state: &mut State, shared: &Shared) -> Result<(), ConnectionError> {
        while let Some(head) = Head::parse(&self.read[self.start..self.end]) {
            if head.len > DEFAULT_MAX_FRAME {
                return Err(ConnectionError(
                    Reason::FRAME_SIZE_ERROR,
                    "a frame over the frame size",
                ));
            }
            let at = self.start + HEADER_LEN;
            if self.end < at + head.len {
                break;
            }
            self.start = at + head.len;
            let payload = at..at + head.len;
            self.handle(state, shared, head, payload)?;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.read.len() - self.end < HEADER_LEN + DEFAULT_MAX_FRAME {
            self.read.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        Ok(())
    }

    fn handle(
        &mut self,
        state: &mut State,
        shared: &Shared,
        head: Head,
        payload: std::ops::Range<usize>,
    ) -> Result<(), ConnectionError> {
        let protocol = |what| Err(ConnectionError(Reason::PROTOCOL_ERROR, what));
        let frame_size = |what| Err(ConnectionError(Reason::FRAME_SIZE_ERROR, what));
        let bytes = &self.read[payload];
        if let Some((stream, end_stream)) = self.continuing {
            if head.kind != frame::CONTINUATION || head.stream != stream {
                return protocol("a header block not continued");
            }
            if self.block.len() + bytes.len() > self.max_list {
                return Err(ConnectionError(
                    Reason::ENHANCE_YOUR_CALM,
                    "a header block over the header list limit",
                ));
            }
            self.block.extend_from_slice(bytes);
            if head.has(frame::END_HEADERS) {
                self.continuing = None;
                let fields = self.decoder.decode(&self.block).map_err(compression)?;
                self.block.clear();
                state.headers(stream, end_stream, fields)?;
            }
            return Ok(());
        }
        match head.kind {
            frame::DATA => {
                if head.stream == 0 {
                    return protocol("DATA on stream 0");
                }
                let Some(data) = frame::unpadded(head, bytes) else {
                    return protocol("padding longer than its frame");
                };
                state.data(head.stream, head.has(frame::END_STREAM), data, head.len)
            }
            frame::HEADERS => {
                if head.stream == 0 {
                    return protocol("HEADERS on stream 0");
                }
                let Some(mut block) = frame::unpadded(head, bytes) else {
                    return protocol("padding longer than its frame");
                };
                if head.has(frame::PRIORITY_FLAG) {
                    let Some(rest) = block.get(5..) else {
                        return protocol("HEADERS too short for its priority");
                    };
                    block = rest;
                }
                let end_stream = head.has(frame::END_STREAM);
                if head.has(frame::END_HEADERS) {
                    let fields = self.decoder.decode(block).map_err(compression)?;
                    state.headers(head.stream, end_stream, fields)
                } else {
                    self.block.clear();
                    self.block.extend_from_slice(block);
                    self.continuing = Some((head.stream, end_stream));
                    Ok(())
                }
            }
            frame::PRIORITY => {
                if head.stream == 0 {
                    return protocol("PRIORITY on stream 0");
                }
                Ok(())
            }
            frame::RST_STREAM => {
                if head.stream == 0 {
                    return protocol("RST_STREAM on stream 0");
                }
                let Some(code) = frame::u32_at(bytes, 0).filter(|_| head.len == 4) else {
                    return frame_size("an RST_STREAM of the wrong size");
                };
                state.reset(head.stream, Reason::from(code))
            }
            frame::SETTINGS => {
                if head.stream != 0 {
                    return protocol("SETTINGS on a stream");
                }
                if head.has(frame::ACK) {
                    return if head.len == 0 {
                        Ok(())
                    } else {
                        frame_size("a SETTINGS ACK with a payload")
                    };
                }
                if !head.len.is_multiple_of(6) {
                    return frame_size("SETTINGS of the wrong size");
                }
                for entry in bytes.chunks_exact(6) {
                    let id = u16::from_be_bytes([entry[0], entry[1]]);
                    let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                    state.setting(id, value)?;
                }
                frame::settings_ack(&mut state.out);
                Ok(())
            }
            frame::PUSH_PROMISE => protocol("PUSH_PROMISE, with push disabled"),
            frame::PING => {
                if head.stream != 0 {
                    return protocol("PING on a stream");
                }
                if head.len != 8 {
                    return frame_size("a PING of the wrong size");
                }
                if !head.has(frame::ACK) {
                    frame::ping_ack(&mut state.out, bytes);
                }
                Ok(())
            }
            frame::GOAWAY => {
                if head.stream != 0 {
                    return protocol("GOAWAY on a stream");
                }
                let Some(last) = frame::u32_at(bytes, 0).filter(|_| head.len >= 8) else {
                    return frame_size("a GOAWAY too short");
                };
                state.goaway(last & 0x7fff_ffff, shared);
                Ok(())
            }
            frame::WINDOW_UPDATE => {
                let Some(increment) = frame::u32_at(bytes, 0).filter(|_| head.len == 4) else {
                    return frame_size("a WINDOW_UPDATE of the wrong size");
                };
                state.window_update(head.stream, increment & 0x7fff_ffff)
            }
            frame::CONTINUATION => protocol("CONTINUATION without a header block"),
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }
}

fn compression(error: loona_hpack::decoder::DecoderError) -> ConnectionError {
    tracing::debug!(%error, "an upstream's header block does not decode");
    ConnectionError(
        Reason::COMPRESSION_ERROR,
        "a header block that does not decode",
    )
}

fn io_error(error: &std::io::Error) -> StreamError {
    StreamError::Closed(error.to_string().into())
}

impl<T> Future for Driver<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            // What the calls (and the frames handled) queued.
            let finished = {
                let mut state = this.shared.lock();
                state.register_task(cx.waker());
                if this.writing.is_empty() {
                    std::mem::swap(&mut this.writing, &mut state.out);
                } else {
                    this.writing.extend_from_slice(&state.out);
                    state.out.clear();
                }
                state.finished()
            };
            match this.poll_write(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => {
                    this.end(io_error(&error));
                    return Poll::Ready(());
                }
                Poll::Pending if this.ending => return Poll::Pending,
                Poll::Pending if this.writing.len() - this.written >= MAX_BACKLOG => {
                    return Poll::Pending;
                }
                Poll::Pending => {}
            }
            if this.ending || finished && this.writing.is_empty() {
                this.shared.stop_accepting();
                return Poll::Ready(());
            }
            let mut buf = ReadBuf::new(&mut this.reader.read[this.reader.end..]);
            match Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => this.end(io_error(&error)),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    this.end(StreamError::Closed("the upstream closed it".into()));
                }
                Poll::Ready(Ok(())) => {
                    this.reader.end += buf.filled().len();
                    let mut state = this.shared.lock();
                    if let Err(error) = this.reader.handle_frames(&mut state, &this.shared) {
                        tracing::debug!(what = error.1, reason = %error.0, "upstream connection error");
                        state.connection_error(error);
                        drop(state);
                        this.shared.stop_accepting();
                        this.ending = true;
                    }
                }
            }
        }
    }
}

impl<T> Drop for Driver<T> {
    fn drop(&mut self) {
        // Also when dropped unfinished with the runtime that ran it.
        self.shared.stop_accepting();
        self.shared
            .lock()
            .fail_all(StreamError::Closed("its task ended".into()));
    }
}
