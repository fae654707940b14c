//! Terminal connections: REPLAY and DATA in, input and RESIZE out.
//!
//! A terminal is its own connection (`clientType: "terminal"`), never the
//! lease connection, so terminal bulk can never delay a renewal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use shellper_protocol::Frame;
use shellper_protocol::msg::{ExitMsg, Resize, Welcome};

use crate::conn::{self, HelloOpts, Reader, Writer};
use crate::error::{Error, Result};

/// Output of a terminal connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The replay buffer, sent once right after WELCOME (maybe empty).
    Replay(Bytes),
    /// Live PTY output.
    Data(Bytes),
    /// The PTY child ended.
    Exit(ExitMsg),
}

/// An attached terminal.
#[derive(Debug)]
pub struct Terminal {
    socket: PathBuf,
    reader: TerminalReader,
    writer: TerminalWriter,
    welcome: Welcome,
}

/// Receiving half of a [`Terminal`].
#[derive(Debug)]
pub struct TerminalReader {
    socket: PathBuf,
    reader: Reader,
}

/// Sending half of a [`Terminal`].
#[derive(Debug)]
pub struct TerminalWriter {
    socket: PathBuf,
    writer: Writer,
}

impl Terminal {
    /// Connects a terminal client to `socket` (HELLO terminal, replay and
    /// data on), within `timeout`.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Terminal> {
        let c = conn::connect(socket, HelloOpts::TERMINAL, timeout, false).await?;
        Ok(Terminal {
            socket: socket.to_path_buf(),
            reader: TerminalReader {
                socket: socket.to_path_buf(),
                reader: c.reader,
            },
            writer: TerminalWriter {
                socket: socket.to_path_buf(),
                writer: c.writer,
            },
            welcome: c.welcome,
        })
    }

    /// The shellper's WELCOME (child pid, size, start time).
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The socket this terminal is connected to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Next output; `None` once the shellper closed the connection.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Output>> {
        self.reader.next().await
    }

    /// Writes input bytes to the PTY.
    pub async fn write(&mut self, bytes: impl Into<Bytes>) -> Result<()> {
        self.writer.write(bytes).await
    }

    /// Resizes the PTY.
    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<()> {
        self.writer.resize(cols, rows).await
    }

    /// Splits into independently usable halves.
    pub fn into_split(self) -> (TerminalReader, TerminalWriter) {
        (self.reader, self.writer)
    }
}

impl TerminalReader {
    /// Next output; `None` once the shellper closed the connection.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Output>> {
        loop {
            let f = match self.reader.next().await? {
                Ok(f) => f,
                Err(e) => {
                    return Some(Err(Error::Conn {
                        socket: self.socket.clone(),
                        step: "terminal read",
                        detail: e.to_string(),
                    }));
                }
            };
            return Some(Ok(match f {
                Frame::Replay(b) => Output::Replay(b),
                Frame::Data(b) => Output::Data(b),
                Frame::Exit(e) => Output::Exit(e),
                _ => continue,
            }));
        }
    }
}

impl TerminalWriter {
    async fn send(&mut self, f: Frame, step: &'static str) -> Result<()> {
        self.writer.send(f).await.map_err(|e| Error::Conn {
            socket: self.socket.clone(),
            step,
            detail: e.to_string(),
        })
    }

    /// Writes input bytes to the PTY.
    pub async fn write(&mut self, bytes: impl Into<Bytes>) -> Result<()> {
        self.send(Frame::Data(bytes.into()), "terminal write").await
    }

    /// Resizes the PTY.
    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<()> {
        self.send(Frame::Resize(Resize { cols, rows }), "terminal resize")
            .await
    }
}
