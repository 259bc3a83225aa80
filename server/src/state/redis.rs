//! The Redis store (`--state redis://…`).
//!
//! Keys, all under `proxim:v1:` (the `v1` is the layout's version), each with an absolute
//! expiry (`PXAT`/`PEXPIREAT`), so a server that crashed leaves nothing behind for longer than
//! its own promises last:
//!
//! | key                         | type   | value                                        | lapses                       |
//! |-----------------------------|--------|----------------------------------------------|------------------------------|
//! | `proxim:v1:code:{code}`     | hash   | `device`, `expires` and `kept` (Unix ms; 0: none) | the code's expiry plus the reservation, the end of its reservation, or a lease |
//! | `proxim:v1:device:{device}` | string | the device's latest code                     | with that code               |
//! | `proxim:v1:retired:{code}`  | string | `used:{until}` or `expired:{until}`          | at `until`                   |
//!
//! Ops are written in order, one pipeline per batch (one round trip). Reading the whole state
//! at start walks the keyspace with `SCAN` and reads the records in pipelines of 500.
//!
//! One server per Redis database, for now: `proxim:v1:instance` holds the running server's
//! lease (`{host} {listen address} {run}`, [`LEASE`] long, renewed every [`LEASE`]/3). A second
//! server finds it held and does not start (after waiting out a lease: the holder may have just
//! crashed); a server restarted on the same host and address takes it over at once (the old
//! process is gone: the address is bound again). A server that lost its lease (cut off from
//! Redis longer than a lease, and another server took over) stops writing.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use proxim_protocol::{DeviceId, RoutingCode};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Pipeline, RedisError};
use tokio::sync::Mutex;

use super::{Snapshot, StateError, StateOp, StateStore, StoredCode, StoredRetired, UnixMs};
use crate::retired::RetireReason;

/// Every key's prefix.
pub(crate) const PREFIX: &str = "proxim:v1:";
/// Connecting may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One command or pipeline may take this long.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Records read or keys deleted per round trip.
const READ_BATCH: usize = 500;
/// How long the instance lease lasts without renewal.
pub(crate) const LEASE: Duration = Duration::from_secs(6);

/// Take the lease `KEYS[1]` for `ARGV[1]` (for `ARGV[3]` ms) when it is free or held by the same
/// host and address (`ARGV[2]`, a prefix of `ARGV[1]`); otherwise return the holder.
const ACQUIRE: &str = r"
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] and string.sub(held, 1, string.len(ARGV[2])) ~= ARGV[2] then
  return held
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return false
";

/// Renew the lease `KEYS[1]` when `ARGV[1]` still holds it: 1, else 0.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Give the lease back when `ARGV[1]` holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
";

/// The lease scripts, hashed once (`EVALSHA`, loaded on first use by `invoke_async`).
static ACQUIRE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ACQUIRE));
static RENEW_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RENEW));
static RELEASE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE));

/// A Redis server holding the state.
#[derive(Debug)]
pub(crate) struct RedisStore {
    client: Client,
    /// The URL without its password.
    name: String,
    conn: Mutex<Option<MultiplexedConnection>>,
    /// This server in the lease: `{host} {listen address} {run}`.
    owner: String,
    /// The part of [`RedisStore::owner`] a restarted server on the same host and address
    /// shares: `{host} {listen address} `.
    place: String,
}

impl RedisStore {
    /// A store on the Redis at `url` (not connected yet), for the server `instance` (its host
    /// name) listening on `listen`.
    pub(crate) fn new(
        url: &str,
        instance: &str,
        listen: std::net::SocketAddr,
    ) -> Result<RedisStore, StateError> {
        let name = crate::events::redact_url(url);
        let client = Client::open(url).map_err(|e| StateError::Refused {
            store: name.clone(),
            reason: e.to_string(),
        })?;
        let place = format!("{instance} {listen} ");
        Ok(RedisStore {
            client,
            name,
            conn: Mutex::new(None),
            owner: format!("{place}{:016x}", rand::random::<u64>()),
            place,
        })
    }

    fn lease_key() -> String {
        format!("{PREFIX}instance")
    }

    /// Take the instance lease, waiting out a lease held by another server (it may have just
    /// crashed); an error names the holder when it is still held then.
    async fn acquire(&self) -> Result<(), StateError> {
        let deadline = tokio::time::Instant::now() + LEASE + LEASE / 2;
        loop {
            let Some(holder) = self.acquire_now().await? else {
                return Ok(());
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(StateError::Refused {
                    store: self.name.clone(),
                    reason: format!(
                        "another server uses this Redis database ({holder}); one server per \
                         database for now: give each its own (redis://…/1, /2…)"
                    ),
                });
            }
            tracing::warn!(holder = %holder, "the state store's lease is held; waiting for it to lapse");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The connection, opened when there is none.
    async fn connection(&self) -> Result<MultiplexedConnection, StateError> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let opened = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.error(&e))?;
        *conn = Some(opened.clone());
        Ok(opened)
    }

    /// Run `pipe` on the connection; on failure, forget the connection (the next call opens a
    /// new one).
    async fn run(&self, pipe: &Pipeline) -> Result<(), StateError> {
        let mut conn = self.connection().await?;
        match pipe.exec_async(&mut conn).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed(&e).await),
        }
    }

    async fn failed(&self, e: &RedisError) -> StateError {
        *self.conn.lock().await = None;
        self.error(e)
    }

    fn error(&self, e: &RedisError) -> StateError {
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
            StateError::Unreachable {
                store: self.name.clone(),
                reason: e.to_string(),
            }
        } else {
            StateError::Refused {
                store: self.name.clone(),
                reason: e.to_string(),
            }
        }
    }

    /// One try at the lease: `None` when taken, else its holder.
    async fn acquire_now(&self) -> Result<Option<String>, StateError> {
        let mut conn = self.connection().await?;
        match ACQUIRE_SCRIPT
            .key(Self::lease_key())
            .arg(&self.owner)
            .arg(&self.place)
            .arg(LEASE.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
        {
            Ok(held) => Ok(held),
            Err(e) => Err(self.failed(&e).await),
        }
    }

    /// Every key under [`PREFIX`].
    async fn keys(&self) -> Result<Vec<String>, StateError> {
        let mut conn = self.connection().await?;
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let page: Result<(u64, Vec<String>), RedisError> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{PREFIX}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await;
            let (next, page) = match page {
                Ok(page) => page,
                Err(e) => return Err(self.failed(&e).await),
            };
            keys.extend(page);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// Read `keys` with `command` (`GET`, `HGETALL`), a pipeline per [`READ_BATCH`].
    async fn read<T: redis::FromRedisValue>(
        &self,
        command: &str,
        keys: &[String],
    ) -> Result<Vec<T>, StateError> {
        let mut conn = self.connection().await?;
        let mut values = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(READ_BATCH) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd(command).arg(key);
            }
            match pipe.query_async::<Vec<T>>(&mut conn).await {
                Ok(page) => values.extend(page),
                Err(e) => return Err(self.failed(&e).await),
            }
        }
        Ok(values)
    }
}

/// The key of a live or kept code.
fn code_key(code: &RoutingCode) -> String {
    format!("{PREFIX}code:{}", code.as_str())
}

fn device_key(device: &DeviceId) -> String {
    format!("{PREFIX}device:{}", device.as_str())
}

fn retired_key(code: &RoutingCode) -> String {
    format!("{PREFIX}retired:{}", code.as_str())
}

/// Add the commands for `op` to `pipe`.
fn add(pipe: &mut Pipeline, op: &StateOp) {
    match op {
        StateOp::PutCode {
            code,
            device,
            expires,
            kept_until,
            latest,
            lapses,
        } => {
            let key = code_key(code);
            pipe.cmd("HSET")
                .arg(&key)
                .arg("device")
                .arg(device.as_str())
                .arg("expires")
                .arg(expires.unwrap_or(0))
                .arg("kept")
                .arg(kept_until.unwrap_or(0))
                .ignore();
            pipe.cmd("PEXPIREAT").arg(&key).arg(*lapses).ignore();
            if *latest {
                pipe.cmd("SET")
                    .arg(device_key(device))
                    .arg(code.as_str())
                    .arg("PXAT")
                    .arg(*lapses)
                    .ignore();
            }
        }
        StateOp::DropCode { code, device } => {
            pipe.cmd("UNLINK").arg(code_key(code)).ignore();
            if let Some(device) = device {
                pipe.cmd("UNLINK").arg(device_key(device)).ignore();
            }
        }
        StateOp::Retire {
            code,
            reason,
            until,
        } => {
            pipe.cmd("SET")
                .arg(retired_key(code))
                .arg(format!("{}:{until}", reason.name()))
                .arg("PXAT")
                .arg(*until)
                .ignore();
        }
    }
}

/// The keys `op` writes.
fn written_keys(op: &StateOp, keys: &mut HashSet<String>) {
    match op {
        StateOp::PutCode {
            code,
            device,
            latest,
            ..
        } => {
            keys.insert(code_key(code));
            if *latest {
                keys.insert(device_key(device));
            }
        }
        StateOp::Retire { code, .. } => {
            keys.insert(retired_key(code));
        }
        StateOp::DropCode { .. } => {}
    }
}

fn parse_ms(value: Option<&String>) -> Option<Option<UnixMs>> {
    let ms: UnixMs = value?.parse().ok()?;
    Some((ms != 0).then_some(ms))
}

fn parse_code(code: &str, fields: &HashMap<String, String>) -> Option<StoredCode> {
    Some(StoredCode {
        code: RoutingCode::new(code.to_owned()).ok()?,
        device: DeviceId::new(fields.get("device")?.clone()).ok()?,
        expires: parse_ms(fields.get("expires"))?,
        kept_until: parse_ms(fields.get("kept"))?,
    })
}

fn parse_retired(code: &str, value: &str) -> Option<StoredRetired> {
    let (reason, until) = value.split_once(':')?;
    let reason = match reason {
        "used" => RetireReason::Used,
        "expired" => RetireReason::Expired,
        _ => return None,
    };
    Some(StoredRetired {
        code: RoutingCode::new(code.to_owned()).ok()?,
        reason,
        until: until.parse().ok()?,
    })
}

impl StateStore for RedisStore {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn load(&self) -> Result<Snapshot, StateError> {
        self.acquire().await?;
        let keys = self.keys().await?;
        let (mut code_keys, mut device_keys, mut retired_keys) =
            (Vec::new(), Vec::new(), Vec::new());
        let mut snapshot = Snapshot::default();
        for key in keys {
            let rest = &key[PREFIX.len()..];
            if rest.starts_with("code:") {
                code_keys.push(key);
            } else if rest.starts_with("device:") {
                device_keys.push(key);
            } else if rest.starts_with("retired:") {
                retired_keys.push(key);
            } else if rest == "instance" {
            } else {
                snapshot.skipped += 1;
            }
        }
        let codes: Vec<HashMap<String, String>> = self.read("HGETALL", &code_keys).await?;
        for (key, fields) in code_keys.iter().zip(codes) {
            // A key that lapsed between the scan and the read comes back empty.
            if fields.is_empty() {
                continue;
            }
            match parse_code(&key[PREFIX.len() + "code:".len()..], &fields) {
                Some(code) => snapshot.codes.push(code),
                None => snapshot.skipped += 1,
            }
        }
        let devices: Vec<Option<String>> = self.read("GET", &device_keys).await?;
        for (key, code) in device_keys.iter().zip(devices) {
            let Some(code) = code else { continue };
            let device = DeviceId::new(key[PREFIX.len() + "device:".len()..].to_owned());
            match (device, RoutingCode::new(code)) {
                (Ok(device), Ok(code)) => snapshot.latest.push((device, code)),
                _ => snapshot.skipped += 1,
            }
        }
        let retired: Vec<Option<String>> = self.read("GET", &retired_keys).await?;
        for (key, value) in retired_keys.iter().zip(retired) {
            let Some(value) = value else { continue };
            match parse_retired(&key[PREFIX.len() + "retired:".len()..], &value) {
                Some(r) => snapshot.retired.push(r),
                None => snapshot.skipped += 1,
            }
        }
        Ok(snapshot)
    }

    async fn write(&self, ops: &[StateOp]) -> Result<(), StateError> {
        let mut pipe = redis::pipe();
        for op in ops {
            add(&mut pipe, op);
        }
        self.run(&pipe).await
    }

    async fn replace_all(&self, ops: &[StateOp]) -> Result<(), StateError> {
        // Write first, then remove what is stale: a crash in between leaves too much, never
        // too little.
        for chunk in ops.chunks(READ_BATCH) {
            self.write(chunk).await?;
        }
        let mut keep = HashSet::new();
        for op in ops {
            written_keys(op, &mut keep);
        }
        let stale: Vec<String> = self
            .keys()
            .await?
            .into_iter()
            .filter(|k| !keep.contains(k) && *k != Self::lease_key())
            .collect();
        for chunk in stale.chunks(READ_BATCH) {
            let mut pipe = redis::pipe();
            pipe.cmd("UNLINK").arg(chunk).ignore();
            self.run(&pipe).await?;
        }
        if !stale.is_empty() {
            tracing::debug!(removed = stale.len(), "stale state records removed");
        }
        Ok(())
    }

    async fn renew(&self) -> Result<bool, StateError> {
        let mut conn = self.connection().await?;
        let renewed: Result<i64, RedisError> = RENEW_SCRIPT
            .key(Self::lease_key())
            .arg(&self.owner)
            .arg(LEASE.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        match renewed {
            Ok(1) => Ok(true),
            // Lapsed (Redis restarted empty, or cut off too long): take it again if free.
            Ok(_) => match self.acquire_now().await? {
                None => Ok(true),
                Some(holder) => {
                    tracing::error!(
                        holder = %holder,
                        "another server took this Redis database over; not writing to it"
                    );
                    Ok(false)
                }
            },
            Err(e) => Err(self.failed(&e).await),
        }
    }

    async fn release(&self) {
        if let Ok(mut conn) = self.connection().await {
            let _: Result<i64, RedisError> = RELEASE_SCRIPT
                .key(Self::lease_key())
                .arg(&self.owner)
                .invoke_async(&mut conn)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_back_and_damaged_ones_are_refused() {
        let fields = |d: &str, e: &str, k: &str| {
            HashMap::from([
                ("device".to_owned(), d.to_owned()),
                ("expires".to_owned(), e.to_owned()),
                ("kept".to_owned(), k.to_owned()),
            ])
        };
        let code = parse_code("K7QX2M", &fields("desk-1", "1764700000000", "0")).unwrap();
        assert_eq!(code.expires, Some(1_764_700_000_000));
        assert_eq!(code.kept_until, None);
        assert!(parse_code("K7QX2M", &fields("desk-1", "soon", "0")).is_none());
        assert!(parse_code("not a code!", &fields("desk-1", "0", "0")).is_none());
        assert!(parse_code("K7QX2M", &HashMap::new()).is_none());
        let retired = parse_retired("K7QX2M", "used:1764700000000").unwrap();
        assert_eq!(retired.reason, RetireReason::Used);
        assert!(parse_retired("K7QX2M", "stolen:1").is_none());
        assert!(parse_retired("K7QX2M", "expired").is_none());
    }
}
