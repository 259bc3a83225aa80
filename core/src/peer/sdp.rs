//! SDP for a data-channel-only session (RFC 8829 JSEP, RFC 8841 SCTP over DTLS): the offer and
//! answer this side writes, and the typed reading of the peer's.
//!
//! Only what a data channel needs is read: ICE credentials, DTLS fingerprints and setup role,
//! the `application` m-line's mid, SCTP port and maximum message size, and any candidates.
//! Other m-lines of an offer are answered as rejected (port 0).

use std::fmt::Write as _;

use super::ice::Credentials;

/// The SCTP port both sides use.
pub(crate) const SCTP_PORT: u16 = 5000;
/// The largest message this side accepts (`a=max-message-size`): 256 KiB, what Chromium
/// advertises too.
pub(crate) const LOCAL_MAX_MESSAGE_SIZE: usize = 256 * 1024;
/// A peer that says nothing about its maximum accepts 64 KiB (RFC 8841 §6.1).
pub(crate) const DEFAULT_REMOTE_MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// The DTLS role an SDP asks for (RFC 5763 `a=setup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setup {
    /// Either (an offer).
    ActPass,
    /// DTLS client.
    Active,
    /// DTLS server.
    Passive,
}

/// One `a=fingerprint` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SdpFingerprint {
    /// Lowercase hash name (`sha-256`, …).
    pub(crate) algorithm: String,
    pub(crate) value: Vec<u8>,
}

/// Why a remote SDP is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SdpError {
    #[error("the SDP has no data channel (no `m=application … webrtc-datachannel` line)")]
    NoDataChannel,
    #[error("the SDP has no ICE credentials (a=ice-ufrag / a=ice-pwd)")]
    NoCredentials,
    #[error("the SDP has no DTLS fingerprint")]
    NoFingerprint,
    #[error("the SDP is malformed: {0}")]
    Malformed(String),
}

/// A rejected m-line of an offer, answered with port 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OtherMedia {
    pub(crate) media: String,
    pub(crate) protocol: String,
    pub(crate) format: String,
    pub(crate) mid: Option<String>,
}

/// What this side needs from the peer's SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteDescription {
    pub(crate) credentials: Credentials,
    pub(crate) fingerprints: Vec<SdpFingerprint>,
    pub(crate) setup: Setup,
    pub(crate) mid: String,
    pub(crate) mline_index: u16,
    pub(crate) sctp_port: u16,
    /// What the peer accepts; `None`: no limit (`a=max-message-size:0`).
    pub(crate) max_message_size: Option<usize>,
    pub(crate) candidates: Vec<String>,
    pub(crate) end_of_candidates: bool,
    /// The m-lines before and after the data channel's, in order (answers keep them).
    pub(crate) other_media: Vec<(usize, OtherMedia)>,
}

impl RemoteDescription {
    /// Read an offer or answer.
    pub(crate) fn parse(sdp: &str) -> Result<RemoteDescription, SdpError> {
        let mut session_ufrag = None;
        let mut session_pwd = None;
        let mut session_fingerprints = Vec::new();
        let mut session_setup = None;
        // (index, media, protocol, format, attributes)
        let mut mlines: Vec<(String, String, String, Vec<String>)> = Vec::new();
        for raw in sdp.lines() {
            let line = raw.trim_end_matches('\r');
            if let Some(m) = line.strip_prefix("m=") {
                let mut parts = m.split_ascii_whitespace();
                let media = parts.next().unwrap_or_default().to_owned();
                let _port = parts.next();
                let protocol = parts.next().unwrap_or_default().to_owned();
                let format: Vec<&str> = parts.collect();
                mlines.push((media, protocol, format.join(" "), Vec::new()));
                continue;
            }
            let Some(attr) = line.strip_prefix("a=") else {
                continue;
            };
            match mlines.last_mut() {
                Some((_, _, _, attrs)) => attrs.push(attr.to_owned()),
                None => {
                    if let Some(v) = attr.strip_prefix("ice-ufrag:") {
                        session_ufrag = Some(v.trim().to_owned());
                    } else if let Some(v) = attr.strip_prefix("ice-pwd:") {
                        session_pwd = Some(v.trim().to_owned());
                    } else if let Some(v) = attr.strip_prefix("fingerprint:") {
                        session_fingerprints.extend(parse_fingerprint(v));
                    } else if let Some(v) = attr.strip_prefix("setup:") {
                        session_setup = parse_setup(v);
                    }
                }
            }
        }
        let index = mlines
            .iter()
            .position(|(media, protocol, format, _)| {
                media == "application"
                    && protocol.contains("SCTP")
                    && (format.contains("webrtc-datachannel") || format.parse::<u16>().is_ok())
            })
            .ok_or(SdpError::NoDataChannel)?;
        let (_, _, format, attrs) = &mlines[index];
        let mut ufrag = session_ufrag;
        let mut pwd = session_pwd;
        let mut fingerprints = Vec::new();
        let mut setup = session_setup;
        let mut mid = None;
        // Old `DTLS/SCTP 5000` form: the port is the format.
        let mut sctp_port = format.parse::<u16>().unwrap_or(SCTP_PORT);
        let mut max_message_size = Some(DEFAULT_REMOTE_MAX_MESSAGE_SIZE);
        let mut candidates = Vec::new();
        let mut end_of_candidates = false;
        for attr in attrs {
            let (name, value) = attr.split_once(':').unwrap_or((attr.as_str(), ""));
            match name {
                "ice-ufrag" => ufrag = Some(value.trim().to_owned()),
                "ice-pwd" => pwd = Some(value.trim().to_owned()),
                "fingerprint" => fingerprints.extend(parse_fingerprint(value)),
                "setup" => setup = parse_setup(value).or(setup),
                "mid" => mid = Some(value.trim().to_owned()),
                "sctp-port" => {
                    sctp_port = value
                        .trim()
                        .parse()
                        .map_err(|_| SdpError::Malformed(format!("a=sctp-port:{value}")))?;
                }
                "max-message-size" => {
                    let v: u64 = value
                        .trim()
                        .parse()
                        .map_err(|_| SdpError::Malformed(format!("a=max-message-size:{value}")))?;
                    max_message_size = (v != 0).then(|| v.min(usize::MAX as u64) as usize);
                }
                "candidate" => candidates.push(format!("candidate:{value}")),
                "end-of-candidates" => end_of_candidates = true,
                _ => {}
            }
        }
        if fingerprints.is_empty() {
            fingerprints = session_fingerprints;
        }
        let (Some(ufrag), Some(pwd)) = (ufrag, pwd) else {
            return Err(SdpError::NoCredentials);
        };
        if ufrag.is_empty() || pwd.is_empty() || ufrag.len() > 256 || pwd.len() > 256 {
            return Err(SdpError::NoCredentials);
        }
        if fingerprints.is_empty() {
            return Err(SdpError::NoFingerprint);
        }
        let other_media = mlines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(i, (media, protocol, format, attrs))| {
                let mid = attrs
                    .iter()
                    .find_map(|a| a.strip_prefix("mid:").map(|m| m.trim().to_owned()));
                (
                    i,
                    OtherMedia {
                        media: media.clone(),
                        protocol: protocol.clone(),
                        format: format
                            .split_ascii_whitespace()
                            .next()
                            .unwrap_or("0")
                            .to_owned(),
                        mid,
                    },
                )
            })
            .collect();
        Ok(RemoteDescription {
            credentials: Credentials { ufrag, pwd },
            fingerprints,
            setup: setup.unwrap_or(Setup::ActPass),
            mid: mid.unwrap_or_else(|| index.to_string()),
            mline_index: index as u16,
            sctp_port,
            max_message_size,
            candidates,
            end_of_candidates,
            other_media,
        })
    }
}

fn parse_setup(v: &str) -> Option<Setup> {
    match v.trim() {
        "actpass" => Some(Setup::ActPass),
        "active" => Some(Setup::Active),
        "passive" => Some(Setup::Passive),
        _ => None,
    }
}

fn parse_fingerprint(v: &str) -> Option<SdpFingerprint> {
    let (algorithm, hex) = v.trim().split_once(' ')?;
    let mut value = Vec::new();
    for part in hex.trim().split(':') {
        if part.len() != 2 {
            return None;
        }
        value.push(u8::from_str_radix(part, 16).ok()?);
    }
    Some(SdpFingerprint {
        algorithm: algorithm.to_ascii_lowercase(),
        value,
    })
}

/// What goes into this side's offer or answer.
#[derive(Debug, Clone)]
pub(crate) struct LocalDescription<'a> {
    pub(crate) session_id: u64,
    pub(crate) credentials: &'a Credentials,
    /// SHA-256 of this side's certificate.
    pub(crate) fingerprint: &'a [u8; 32],
    pub(crate) setup: Setup,
    pub(crate) mid: &'a str,
    /// For an answer: the offer's other m-lines, rejected in place.
    pub(crate) other_media: &'a [(usize, OtherMedia)],
    pub(crate) data_index: usize,
}

impl LocalDescription<'_> {
    /// The SDP text. Candidates are trickled, not listed here.
    pub(crate) fn to_sdp(&self) -> String {
        let mut s = String::with_capacity(600);
        let _ = write!(
            s,
            "v=0\r\no=- {} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {}\r\n\
             a=ice-options:trickle\r\n",
            self.session_id, self.mid
        );
        let total = self.other_media.len() + 1;
        for i in 0..total {
            if i == self.data_index {
                self.write_data_mline(&mut s);
            } else if let Some((_, m)) = self.other_media.iter().find(|(j, _)| *j == i) {
                let _ = write!(
                    s,
                    "m={} 0 {} {}\r\nc=IN IP4 0.0.0.0\r\n",
                    m.media, m.protocol, m.format
                );
                if let Some(mid) = &m.mid {
                    let _ = write!(s, "a=mid:{mid}\r\n");
                }
                s.push_str("a=inactive\r\n");
            }
        }
        s
    }

    fn write_data_mline(&self, s: &mut String) {
        let fingerprint: Vec<String> = self
            .fingerprint
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        let setup = match self.setup {
            Setup::ActPass => "actpass",
            Setup::Active => "active",
            Setup::Passive => "passive",
        };
        let _ = write!(
            s,
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
             a=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=ice-options:trickle\r\n\
             a=fingerprint:sha-256 {}\r\na=setup:{setup}\r\na=mid:{}\r\n\
             a=sctp-port:{SCTP_PORT}\r\na=max-message-size:{LOCAL_MAX_MESSAGE_SIZE}\r\n",
            self.credentials.ufrag,
            self.credentials.pwd,
            fingerprint.join(":"),
            self.mid,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            ufrag: "abcd1234".into(),
            pwd: "0123456789abcdefghijklmn".into(),
        }
    }

    #[test]
    fn our_offer_reads_back() {
        let fp = [0xab; 32];
        let c = creds();
        let sdp = LocalDescription {
            session_id: 42,
            credentials: &c,
            fingerprint: &fp,
            setup: Setup::ActPass,
            mid: "0",
            other_media: &[],
            data_index: 0,
        }
        .to_sdp();
        let r = RemoteDescription::parse(&sdp).unwrap();
        assert_eq!(r.credentials, c);
        assert_eq!(
            r.fingerprints,
            vec![SdpFingerprint {
                algorithm: "sha-256".into(),
                value: fp.to_vec()
            }]
        );
        assert_eq!(r.setup, Setup::ActPass);
        assert_eq!(r.mid, "0");
        assert_eq!(r.sctp_port, 5000);
        assert_eq!(r.max_message_size, Some(LOCAL_MAX_MESSAGE_SIZE));
        assert!(sdp.contains("a=ice-options:trickle"));
    }

    #[test]
    fn a_browser_offer_with_audio_and_extra_fingerprints_is_understood() {
        let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            a=group:BUNDLE 0 1\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
            a=ice-ufrag:Ab3d\r\na=ice-pwd:pwpwpwpwpwpwpwpwpwpwpwpw\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
            a=ice-ufrag:Ab3d\r\na=ice-pwd:pwpwpwpwpwpwpwpwpwpwpwpw\r\n\
            a=fingerprint:sha-256 01:02:03:04:05:06:07:08:09:0A:0B:0C:0D:0E:0F:10:11:12:13:14:15:16:17:18:19:1A:1B:1C:1D:1E:1F:20\r\n\
            a=fingerprint:sha-384 AA:BB\r\n\
            a=setup:actpass\r\na=mid:1\r\na=sctp-port:5000\r\n\
            a=candidate:1 1 udp 2122260223 198.18.50.1 54321 typ host\r\n\
            a=end-of-candidates\r\n";
        let r = RemoteDescription::parse(offer).unwrap();
        assert_eq!(r.mid, "1");
        assert_eq!(r.mline_index, 1);
        assert_eq!(r.fingerprints.len(), 2);
        assert_eq!(r.fingerprints[1].algorithm, "sha-384");
        // No max-message-size: 64 KiB (RFC 8841).
        assert_eq!(r.max_message_size, Some(65_536));
        assert_eq!(r.candidates.len(), 1);
        assert!(r.end_of_candidates);
        assert_eq!(r.other_media.len(), 1);
        let c = creds();
        let answer = LocalDescription {
            session_id: 7,
            credentials: &c,
            fingerprint: &[1; 32],
            setup: Setup::Active,
            mid: &r.mid,
            other_media: &r.other_media,
            data_index: usize::from(r.mline_index),
        }
        .to_sdp();
        let audio = answer.find("m=audio 0").unwrap();
        let data = answer.find("m=application 9").unwrap();
        assert!(audio < data, "{answer}");
        assert!(answer.contains("a=setup:active"));
    }

    #[test]
    fn unusable_sdps_say_why() {
        assert_eq!(
            RemoteDescription::parse("v=0\r\n"),
            Err(SdpError::NoDataChannel)
        );
        let no_fp = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
            a=ice-ufrag:a\r\na=ice-pwd:b\r\n";
        assert_eq!(
            RemoteDescription::parse(no_fp),
            Err(SdpError::NoFingerprint)
        );
        let no_ice = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert_eq!(
            RemoteDescription::parse(no_ice),
            Err(SdpError::NoCredentials)
        );
        let bad = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
            a=ice-ufrag:a\r\na=ice-pwd:b\r\na=fingerprint:sha-256 00\r\na=max-message-size:x\r\n";
        assert!(matches!(
            RemoteDescription::parse(bad),
            Err(SdpError::Malformed(_))
        ));
        let unlimited = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
            a=ice-ufrag:a\r\na=ice-pwd:b\r\na=fingerprint:sha-256 00\r\na=max-message-size:0\r\n";
        assert_eq!(
            RemoteDescription::parse(unlimited)
                .unwrap()
                .max_message_size,
            None
        );
    }
}
