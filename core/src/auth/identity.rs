//! Long-term device identity keys and the list of trusted devices, kept in the data directory.
//!
//! - `identity.key`: the device's Ed25519 secret key (32 bytes, hex), created on first use with
//!   mode 0600. It signs the DTLS fingerprint on reconnects; it never leaves the device.
//! - `trusted_devices.json`: the devices this one paired with, by identity key. Written
//!   atomically (temporary file, then rename), so a crash never leaves half a list.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const IDENTITY_FILE: &str = "identity.key";
const TRUST_FILE: &str = "trusted_devices.json";

/// Why the identity or the trust list could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// This device's long-term identity key.
#[derive(Clone)]
pub struct Identity {
    key: Arc<SigningKey>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public().short())
    }
}

impl Identity {
    /// A fresh identity, kept in memory only (no data directory: nothing is remembered).
    pub fn ephemeral() -> Identity {
        let seed = Zeroizing::new(rand::random::<[u8; 32]>());
        Identity {
            key: Arc::new(SigningKey::from_bytes(&seed)),
        }
    }

    /// Load the identity from `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Identity, StoreError> {
        let path = dir.join(IDENTITY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bytes = Zeroizing::new(
                    hex::decode(text.trim())
                        .map_err(|_| StoreError(format!("{} is not a hex key", path.display())))?,
                );
                let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    StoreError(format!("{} does not hold a 32-byte key", path.display()))
                })?;
                let seed = Zeroizing::new(seed);
                return Ok(Identity {
                    key: Arc::new(SigningKey::from_bytes(&seed)),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError(format!("reading {}: {e}", path.display()))),
        }
        let identity = Identity::ephemeral();
        let text = Zeroizing::new(hex::encode(identity.key.to_bytes()));
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("creating {}: {e}", dir.display())))?;
        write_private(&path, text.as_bytes())
            .map_err(|e| StoreError(format!("writing {}: {e}", path.display())))?;
        tracing::info!(key = %identity.public().short(), "created this device's identity key");
        Ok(identity)
    }

    /// The public half.
    pub fn public(&self) -> PublicIdentity {
        PublicIdentity(self.key.verifying_key().to_bytes())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

/// A device's public identity key (Ed25519).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicIdentity(pub [u8; 32]);

impl std::fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicIdentity({})", self.short())
    }
}

impl PublicIdentity {
    /// Hex of the key.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short, human-comparable form: the first 8 bytes of its SHA-256, grouped.
    pub fn short(&self) -> String {
        let digest = Sha256::digest(self.0);
        let hex = hex::encode(&digest[..8]);
        format!(
            "{}-{}-{}-{}",
            &hex[..4],
            &hex[4..8],
            &hex[8..12],
            &hex[12..]
        )
    }

    /// Whether `signature` is this key's signature of `message`.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

/// Which side a trusted device was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceRole {
    /// A phone (this device is the desktop).
    Phone,
    /// A desktop (this device is the phone).
    Desktop,
}

/// A device this one paired with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedDevice {
    /// Its protocol device id (what a phone asks the server for when reconnecting).
    pub device_id: String,
    /// Its name, as it authenticated it during pairing.
    pub name: String,
    /// Its identity key, hex.
    pub public_key: String,
    /// Phone or desktop.
    pub role: DeviceRole,
    /// The signaling server it was paired through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,
    /// When it was paired, seconds since the Unix epoch.
    pub paired_at: u64,
    /// When it last connected, seconds since the Unix epoch.
    pub last_seen: u64,
}

impl TrustedDevice {
    /// The identity key, if the stored hex is valid.
    pub fn identity(&self) -> Option<PublicIdentity> {
        let bytes = hex::decode(&self.public_key).ok()?;
        Some(PublicIdentity(bytes.try_into().ok()?))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    version: u32,
    devices: Vec<TrustedDevice>,
}

/// The trusted-device list in a data directory. Every call reads the file afresh, so a
/// `proxim devices revoke` in another process takes effect on the next connection.
#[derive(Debug, Clone)]
pub struct TrustStore {
    path: Option<PathBuf>,
}

impl TrustStore {
    /// The list in `dir` (created on first write).
    pub fn open(dir: &Path) -> TrustStore {
        TrustStore {
            path: Some(dir.join(TRUST_FILE)),
        }
    }

    /// A store that remembers nothing (no data directory).
    pub fn none() -> TrustStore {
        TrustStore { path: None }
    }

    /// Whether trust is remembered at all.
    pub fn is_persistent(&self) -> bool {
        self.path.is_some()
    }

    /// Every trusted device.
    pub fn list(&self) -> Result<Vec<TrustedDevice>, StoreError> {
        Ok(self.read()?.devices)
    }

    /// The trusted device with this identity key and role.
    pub fn find_key(
        &self,
        key: &PublicIdentity,
        role: DeviceRole,
    ) -> Result<Option<TrustedDevice>, StoreError> {
        Ok(self
            .read()?
            .devices
            .into_iter()
            .find(|d| d.role == role && d.identity().as_ref() == Some(key)))
    }

    /// The trusted device with this device id (or unique id prefix, at least 4 characters)
    /// and role.
    pub fn find_id(&self, id: &str, role: DeviceRole) -> Result<Option<TrustedDevice>, StoreError> {
        let devices = self.read()?.devices;
        if let Some(exact) = devices.iter().find(|d| d.role == role && d.device_id == id) {
            return Ok(Some(exact.clone()));
        }
        if id.len() < 4 {
            return Ok(None);
        }
        let mut matches = devices
            .into_iter()
            .filter(|d| d.role == role && d.device_id.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some(one), None) => Ok(Some(one)),
            _ => Ok(None),
        }
    }

    /// Remember `device` (replacing an entry with the same key and role).
    pub fn add(&self, mut device: TrustedDevice) -> Result<(), StoreError> {
        if self.path.is_none() {
            return Ok(());
        }
        let mut file = self.read()?;
        if let Some(old) = file
            .devices
            .iter()
            .find(|d| d.role == device.role && d.public_key == device.public_key)
        {
            device.paired_at = old.paired_at;
        }
        file.devices
            .retain(|d| !(d.role == device.role && d.public_key == device.public_key));
        // One entry per device id and role: a re-paired device with a new key replaces the old.
        file.devices
            .retain(|d| !(d.role == device.role && d.device_id == device.device_id));
        file.devices.push(device);
        self.write(&file)
    }

    /// Note that the device with `key` connected now.
    pub fn touch(&self, key: &PublicIdentity, role: DeviceRole) -> Result<(), StoreError> {
        let mut file = self.read()?;
        let hex = key.to_hex();
        let mut changed = false;
        for d in &mut file.devices {
            if d.role == role && d.public_key == hex {
                d.last_seen = unix_now();
                changed = true;
            }
        }
        if changed { self.write(&file) } else { Ok(()) }
    }

    /// Forget a device by id (or unique prefix) in either role. Returns what was removed.
    pub fn revoke(&self, id: &str) -> Result<Vec<TrustedDevice>, StoreError> {
        let mut file = self.read()?;
        let exact: Vec<usize> = (0..file.devices.len())
            .filter(|&i| file.devices[i].device_id == id)
            .collect();
        let chosen = if !exact.is_empty() {
            exact
        } else if id.len() >= 4 {
            let prefixed: Vec<usize> = (0..file.devices.len())
                .filter(|&i| file.devices[i].device_id.starts_with(id))
                .collect();
            let ids: std::collections::BTreeSet<&str> = prefixed
                .iter()
                .map(|&i| file.devices[i].device_id.as_str())
                .collect();
            if ids.len() > 1 {
                return Err(StoreError(format!(
                    "`{id}` matches {} devices; give more of the id",
                    ids.len()
                )));
            }
            prefixed
        } else {
            Vec::new()
        };
        let mut removed = Vec::new();
        for i in chosen.into_iter().rev() {
            removed.push(file.devices.remove(i));
        }
        if !removed.is_empty() {
            self.write(&file)?;
            for d in &removed {
                tracing::info!(device = %d.device_id, name = %d.name, "revoked trusted device");
            }
        }
        Ok(removed)
    }

    fn read(&self) -> Result<TrustFile, StoreError> {
        let Some(path) = &self.path else {
            return Ok(TrustFile::default());
        };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                StoreError(format!(
                    "{} is damaged ({e}); move it away to start over",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TrustFile {
                version: 1,
                devices: Vec::new(),
            }),
            Err(e) => Err(StoreError(format!("reading {}: {e}", path.display()))),
        }
    }

    fn write(&self, file: &TrustFile) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = TrustFile {
            version: 1,
            devices: file.devices.clone(),
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| StoreError(format!("encoding the trust list: {e}")))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError(format!("creating {}: {e}", dir.display())))?;
        }
        let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
        write_private(&tmp, &json)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                StoreError(format!("writing {}: {e}", path.display()))
            })
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, key: &PublicIdentity, role: DeviceRole) -> TrustedDevice {
        TrustedDevice {
            device_id: id.into(),
            name: format!("name of {id}"),
            public_key: key.to_hex(),
            role,
            server_url: None,
            paired_at: 100,
            last_seen: 100,
        }
    }

    #[test]
    fn identity_persists_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public(), b.public());
        assert_ne!(a.public(), Identity::ephemeral().public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(IDENTITY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "identity key readable by others: {mode:o}");
        }
        let sig = a.sign(b"msg");
        assert!(b.public().verify(b"msg", &sig));
        assert!(!b.public().verify(b"other", &sig));
        assert!(!Identity::ephemeral().public().verify(b"msg", &sig));
    }

    #[test]
    fn a_damaged_identity_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IDENTITY_FILE), "zz").unwrap();
        let error = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(error.0.contains("not a hex key"), "{error}");
    }

    #[test]
    fn trust_list_add_find_touch_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = TrustStore::open(dir.path());
        assert!(store.list().unwrap().is_empty());
        let k1 = Identity::ephemeral().public();
        let k2 = Identity::ephemeral().public();
        store
            .add(device("dev-aaaa1111", &k1, DeviceRole::Phone))
            .unwrap();
        store
            .add(device("dev-bbbb2222", &k2, DeviceRole::Desktop))
            .unwrap();
        assert_eq!(store.list().unwrap().len(), 2);
        assert!(store.find_key(&k1, DeviceRole::Phone).unwrap().is_some());
        assert!(store.find_key(&k1, DeviceRole::Desktop).unwrap().is_none());
        assert_eq!(
            store
                .find_id("dev-bbbb", DeviceRole::Desktop)
                .unwrap()
                .unwrap()
                .device_id,
            "dev-bbbb2222"
        );
        store.touch(&k1, DeviceRole::Phone).unwrap();
        assert!(
            store
                .find_key(&k1, DeviceRole::Phone)
                .unwrap()
                .unwrap()
                .last_seen
                > 100
        );

        // Re-adding the same key keeps one entry and its first pairing time.
        let mut again = device("dev-aaaa1111", &k1, DeviceRole::Phone);
        again.paired_at = 999;
        store.add(again).unwrap();
        assert_eq!(store.list().unwrap().len(), 2);
        assert_eq!(
            store
                .find_key(&k1, DeviceRole::Phone)
                .unwrap()
                .unwrap()
                .paired_at,
            100
        );

        let removed = store.revoke("dev-aaaa").unwrap();
        assert_eq!(removed.len(), 1);
        assert!(store.find_key(&k1, DeviceRole::Phone).unwrap().is_none());
        assert!(store.revoke("dev-aaaa").unwrap().is_empty());
        // Another store on the same directory sees the change.
        assert_eq!(TrustStore::open(dir.path()).list().unwrap().len(), 1);
    }

    #[test]
    fn ambiguous_prefixes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TrustStore::open(dir.path());
        store
            .add(device(
                "dev-abc1",
                &Identity::ephemeral().public(),
                DeviceRole::Phone,
            ))
            .unwrap();
        store
            .add(device(
                "dev-abc2",
                &Identity::ephemeral().public(),
                DeviceRole::Phone,
            ))
            .unwrap();
        assert!(store.revoke("dev-abc").unwrap_err().0.contains("matches 2"));
        assert!(
            store
                .find_id("dev-abc", DeviceRole::Phone)
                .unwrap()
                .is_none()
        );
        assert_eq!(store.list().unwrap().len(), 2);
    }

    #[test]
    fn a_damaged_trust_list_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TRUST_FILE), "{").unwrap();
        let store = TrustStore::open(dir.path());
        assert!(store.list().unwrap_err().0.contains("damaged"));
        assert!(
            store
                .add(device(
                    "x",
                    &Identity::ephemeral().public(),
                    DeviceRole::Phone
                ))
                .is_err()
        );
    }
}
