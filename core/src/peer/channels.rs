//! The table of data channels: stream ids, who opened what, and each channel's lifecycle.
//!
//! A channel is opened with DATA_CHANNEL_OPEN on a stream of the opener's parity (even for the
//! DTLS client, odd for the server, RFC 8832 §6) and closed by resetting the stream in both
//! directions (RFC 8831 §6.7). A stream id is used again only once both resets completed.

use std::collections::{BTreeSet, HashMap};

use super::ChannelOptions;

/// A channel's identity for the life of the connection (stream ids are reused; this is not).
pub(crate) type ChannelId = u64;

/// Where a channel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelPhase {
    /// Opened before the DTLS role (and so the stream parity) was known.
    Unassigned,
    /// DATA_CHANNEL_OPEN queued; open once the association is up.
    Opening,
    Open,
    /// Its stream is being reset.
    Closing,
}

#[derive(Debug, Clone)]
pub(crate) struct Channel {
    pub(crate) id: ChannelId,
    pub(crate) stream: Option<u16>,
    pub(crate) label: String,
    pub(crate) protocol: String,
    pub(crate) options: ChannelOptions,
    pub(crate) phase: ChannelPhase,
    /// Opened by this side.
    pub(crate) local: bool,
    /// DATA_CHANNEL_ACK received (or this side accepted the open): messages may go unordered.
    pub(crate) acked: bool,
    pub(crate) reset_out: bool,
    pub(crate) reset_in: bool,
    /// The application was told it closed.
    pub(crate) close_reported: bool,
}

impl Channel {
    /// A channel this side opens, before its stream is assigned.
    fn unassigned(id: ChannelId, label: String, options: ChannelOptions) -> Channel {
        Channel {
            id,
            stream: None,
            label,
            protocol: String::new(),
            options,
            phase: ChannelPhase::Unassigned,
            local: true,
            acked: false,
            reset_out: false,
            reset_in: false,
            close_reported: false,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Channels {
    entries: HashMap<ChannelId, Channel>,
    by_stream: HashMap<u16, ChannelId>,
    /// Streams whose reset has not completed in both directions yet.
    resetting: BTreeSet<u16>,
    /// This side's stream parity (0: DTLS client, 1: server), once known.
    parity: Option<u16>,
    next_id: ChannelId,
    max_streams: u16,
}

impl Channels {
    pub(crate) fn new(max_streams: u16) -> Channels {
        Channels {
            max_streams,
            next_id: 1,
            ..Channels::default()
        }
    }

    pub(crate) fn get(&self, id: ChannelId) -> Option<&Channel> {
        self.entries.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: ChannelId) -> Option<&mut Channel> {
        self.entries.get_mut(&id)
    }

    pub(crate) fn by_stream(&self, stream: u16) -> Option<ChannelId> {
        self.by_stream.get(&stream).copied()
    }

    pub(crate) fn ids(&self) -> Vec<ChannelId> {
        let mut ids: Vec<ChannelId> = self.entries.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The DTLS role is known: streams can be assigned.
    pub(crate) fn set_parity(&mut self, dtls_client: bool) {
        self.parity = Some(if dtls_client { 0 } else { 1 });
    }

    /// A channel this side opens. Its stream is assigned now if the parity is known.
    pub(crate) fn open_local(&mut self, label: String, options: ChannelOptions) -> ChannelId {
        let id = self.allocate_id();
        self.entries
            .insert(id, Channel::unassigned(id, label, options));
        id
    }

    /// Assign a stream to an unassigned local channel. `None`: no stream is free.
    pub(crate) fn assign(&mut self, id: ChannelId) -> Option<u16> {
        let parity = self.parity?;
        let stream = (0..self.max_streams)
            .filter(|s| s % 2 == parity)
            .find(|s| !self.by_stream.contains_key(s) && !self.resetting.contains(s))?;
        let entry = self.entries.get_mut(&id)?;
        entry.stream = Some(stream);
        entry.phase = ChannelPhase::Opening;
        self.by_stream.insert(stream, id);
        Some(stream)
    }

    /// Unassigned local channels, oldest first.
    pub(crate) fn unassigned(&self) -> Vec<ChannelId> {
        let mut ids: Vec<ChannelId> = self
            .entries
            .values()
            .filter(|c| c.phase == ChannelPhase::Unassigned)
            .map(|c| c.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The peer opened a channel on `stream`. Refused (with the reason) when the stream has
    /// this side's parity or is in use.
    pub(crate) fn open_remote(
        &mut self,
        stream: u16,
        label: String,
        protocol: String,
        options: ChannelOptions,
    ) -> Result<ChannelId, &'static str> {
        if self.parity == Some(stream % 2) {
            return Err("the peer opened a channel on a stream id of this side's parity");
        }
        if self.by_stream.contains_key(&stream) || self.resetting.contains(&stream) {
            return Err("the peer opened a channel on a stream id in use");
        }
        let id = self.allocate_id();
        // Accepting the open is this side's acknowledgement: messages may go unordered at once.
        let channel = Channel {
            stream: Some(stream),
            protocol,
            phase: ChannelPhase::Open,
            local: false,
            acked: true,
            ..Channel::unassigned(id, label, options)
        };
        self.entries.insert(id, channel);
        self.by_stream.insert(stream, id);
        Ok(id)
    }

    /// The channel starts closing: its stream is being reset.
    pub(crate) fn start_closing(&mut self, id: ChannelId) -> Option<u16> {
        let entry = self.entries.get_mut(&id)?;
        entry.phase = ChannelPhase::Closing;
        let stream = entry.stream?;
        self.resetting.insert(stream);
        Some(stream)
    }

    /// A reset of `stream` completed in one direction. Returns the channel, and whether it is
    /// gone (both directions reset; the stream is free again).
    pub(crate) fn stream_reset(
        &mut self,
        stream: u16,
        outgoing: bool,
    ) -> Option<(ChannelId, bool)> {
        let id = *self.by_stream.get(&stream)?;
        let entry = self.entries.get_mut(&id)?;
        if outgoing {
            entry.reset_out = true;
        } else {
            entry.reset_in = true;
        }
        self.resetting.insert(stream);
        let gone = entry.reset_out && entry.reset_in;
        if gone {
            self.remove(id);
        }
        Some((id, gone))
    }

    /// Forget a channel and free its stream.
    pub(crate) fn remove(&mut self, id: ChannelId) -> Option<Channel> {
        let entry = self.entries.remove(&id)?;
        if let Some(stream) = entry.stream {
            self.by_stream.remove(&stream);
            self.resetting.remove(&stream);
        }
        Some(entry)
    }

    /// A fresh channel id (never reused).
    fn allocate_id(&mut self) -> ChannelId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_follow_the_dtls_role_and_are_reused_after_both_resets() {
        let mut c = Channels::new(16);
        let a = c.open_local("a".into(), ChannelOptions::default());
        assert_eq!(c.assign(a), None, "no parity yet");
        c.set_parity(false);
        assert_eq!(c.assign(a), Some(1));
        let b = c.open_local("b".into(), ChannelOptions::default());
        assert_eq!(c.assign(b), Some(3));
        // The peer (even) opens 0; it may not open 1 (ours) or 0 again.
        c.open_remote(0, "r".into(), String::new(), ChannelOptions::default())
            .unwrap();
        assert!(
            c.open_remote(1, "x".into(), String::new(), ChannelOptions::default())
                .is_err()
        );
        assert!(
            c.open_remote(0, "x".into(), String::new(), ChannelOptions::default())
                .is_err()
        );
        // Closing a: its stream is not reused until both directions reset.
        assert_eq!(c.start_closing(a), Some(1));
        assert_eq!(c.stream_reset(1, true), Some((a, false)));
        let d = c.open_local("d".into(), ChannelOptions::default());
        assert_eq!(c.assign(d), Some(5));
        assert_eq!(c.stream_reset(1, false), Some((a, true)));
        let e = c.open_local("e".into(), ChannelOptions::default());
        assert_eq!(c.assign(e), Some(1));
    }

    #[test]
    fn streams_run_out() {
        let mut c = Channels::new(4);
        c.set_parity(true);
        let a = c.open_local("a".into(), ChannelOptions::default());
        let b = c.open_local("b".into(), ChannelOptions::default());
        let d = c.open_local("c".into(), ChannelOptions::default());
        assert_eq!(c.assign(a), Some(0));
        assert_eq!(c.assign(b), Some(2));
        assert_eq!(c.assign(d), None);
    }
}
