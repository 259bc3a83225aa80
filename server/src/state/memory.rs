//! The in-process store: the same records and lapse times as the Redis store, in a map shared
//! by every server started with it. A server restarted inside one process (tests, an app that
//! embeds the server) finds its codes again; a new process starts empty.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use proxim_protocol::{DeviceId, RoutingCode};

use super::{
    Snapshot, StateError, StateOp, StateStore, StoredCode, StoredRetired, UnixMs, unix_ms,
};

/// An in-process state store; clones share it.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    records: Arc<Mutex<Records>>,
}

#[derive(Debug, Default)]
struct Records {
    /// Each code with the instant its record lapses.
    codes: HashMap<RoutingCode, (StoredCode, UnixMs)>,
    latest: HashMap<DeviceId, (RoutingCode, UnixMs)>,
    retired: HashMap<RoutingCode, StoredRetired>,
}

impl MemoryStore {
    /// Whether `self` and `other` are the same store.
    pub(crate) fn same(&self, other: &MemoryStore) -> bool {
        Arc::ptr_eq(&self.records, &other.records)
    }

    /// How many live or kept codes and retired codes it holds now (lapsed records aside).
    pub fn len(&self) -> (usize, usize) {
        let now = unix_ms(SystemTime::now());
        let records = self.lock();
        (
            records.codes.values().filter(|(_, l)| *l > now).count(),
            records.retired.values().filter(|r| r.until > now).count(),
        )
    }

    /// Whether it holds nothing live.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Apply `ops` (synchronously: nothing here waits).
    pub(crate) fn apply(&self, ops: &[StateOp]) {
        let mut records = self.lock();
        for op in ops {
            records.apply(op);
        }
    }

    /// Hold exactly what `ops` describe.
    pub(crate) fn replace(&self, ops: &[StateOp]) {
        let mut records = self.lock();
        *records = Records::default();
        for op in ops {
            records.apply(op);
        }
    }

    /// What it holds now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let now = unix_ms(SystemTime::now());
        let records = self.lock();
        Snapshot {
            codes: records
                .codes
                .values()
                .filter(|(_, lapses)| *lapses > now)
                .map(|(code, _)| code.clone())
                .collect(),
            latest: records
                .latest
                .iter()
                .filter(|(_, (_, lapses))| *lapses > now)
                .map(|(device, (code, _))| (device.clone(), code.clone()))
                .collect(),
            retired: records
                .retired
                .values()
                .filter(|r| r.until > now)
                .cloned()
                .collect(),
            skipped: 0,
        }
    }
}

impl Records {
    fn apply(&mut self, op: &StateOp) {
        match op {
            StateOp::PutCode {
                code,
                device,
                expires,
                kept_until,
                latest,
                lapses,
            } => {
                let stored = StoredCode {
                    code: code.clone(),
                    device: device.clone(),
                    expires: *expires,
                    kept_until: *kept_until,
                };
                self.codes.insert(code.clone(), (stored, *lapses));
                if *latest {
                    self.latest.insert(device.clone(), (code.clone(), *lapses));
                }
            }
            StateOp::DropCode { code, device } => {
                self.codes.remove(code);
                if let Some(device) = device {
                    self.latest.remove(device);
                }
            }
            StateOp::Retire {
                code,
                reason,
                until,
            } => {
                self.retired.insert(
                    code.clone(),
                    StoredRetired {
                        code: code.clone(),
                        reason: *reason,
                        until: *until,
                    },
                );
            }
        }
    }
}

impl StateStore for MemoryStore {
    fn name(&self) -> String {
        "memory".to_owned()
    }

    async fn load(&self) -> Result<Snapshot, StateError> {
        Ok(self.snapshot())
    }

    async fn write(&self, ops: &[StateOp]) -> Result<(), StateError> {
        self.apply(ops);
        Ok(())
    }

    async fn replace_all(&self, ops: &[StateOp]) -> Result<(), StateError> {
        self.replace(ops);
        Ok(())
    }

    async fn renew(&self) -> Result<bool, StateError> {
        Ok(true)
    }

    async fn release(&self) {}
}
