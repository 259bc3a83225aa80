//! Platform glue: logging (stderr on the host, logcat on Android) and, on Android, attaching
//! Proxim's threads to the JVM.
//!
//! On Android the app must load the library with `System.loadLibrary("proxim")` before the
//! first Proxim call (the sample's `Proxim.init` does): that runs [`android::JNI_OnLoad`], which
//! records the `JavaVM`. JNA alone opens the library with `dlopen` and never calls it.

/// Route Proxim's `tracing` output to the platform log, once; later calls do nothing.
///
/// `filter` is a level (`"info"`, `"debug"`) or, on the host, a full `RUST_LOG`-style filter
/// (`"info,proxim_core=debug"`). Android: logcat, tag `proxim`. Elsewhere: stderr.
#[uniffi::export]
pub fn init_logging(filter: String) {
    imp::init_logging(&filter);
}

/// Called by every runtime worker thread when it starts.
pub(crate) fn on_thread_start() {
    imp::attach_current_thread();
}

/// Called once by the thread that calls the app's listener.
pub(crate) fn on_listener_thread_start() {
    imp::attach_current_thread();
}

#[cfg(not(target_os = "android"))]
mod imp {
    pub(super) fn init_logging(filter: &str) {
        let filter = tracing_subscriber::EnvFilter::try_new(filter)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // Fails when the app (or a previous call) already installed a subscriber: keep that one.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }

    /// Only Android needs threads attached to the JVM (JNA attaches callers itself elsewhere).
    pub(super) fn attach_current_thread() {}
}

#[cfg(target_os = "android")]
use android as imp;

#[cfg(target_os = "android")]
mod android {
    use std::ffi::c_void;
    use std::sync::OnceLock;

    use jni::JavaVM;
    use jni::sys::{JNI_VERSION_1_6, jint};

    /// The JVM this library was loaded into.
    static JAVA_VM: OnceLock<JavaVM> = OnceLock::new();

    /// Called by the JVM when the app runs `System.loadLibrary("proxim")`.
    ///
    /// # Safety
    /// Only the JVM calls this, with a valid `JavaVM` pointer that lives as long as the process.
    #[allow(unsafe_code)]
    #[unsafe(no_mangle)]
    pub unsafe extern "system" fn JNI_OnLoad(
        vm: *mut jni::sys::JavaVM,
        _reserved: *mut c_void,
    ) -> jint {
        // SAFETY: the JVM passes a valid, process-lifetime JavaVM pointer to JNI_OnLoad.
        if let Ok(vm) = unsafe { JavaVM::from_raw(vm) } {
            let _ = JAVA_VM.set(vm);
        }
        JNI_VERSION_1_6
    }

    /// Attach this thread to the JVM for its whole life, so that JNA callbacks from it find an
    /// attached thread (and do not attach and detach on every call).
    pub(super) fn attach_current_thread() {
        if let Some(vm) = JAVA_VM.get()
            && let Err(error) = vm.attach_current_thread_permanently()
        {
            tracing::warn!(%error, "cannot attach a Proxim thread to the JVM");
        }
    }

    /// tracing → `log` (tracing's `log` feature, active when no subscriber is set) → logcat.
    pub(super) fn init_logging(filter: &str) {
        let level = match filter.trim().to_ascii_lowercase().as_str() {
            "trace" => log::LevelFilter::Trace,
            "debug" => log::LevelFilter::Debug,
            "warn" => log::LevelFilter::Warn,
            "error" => log::LevelFilter::Error,
            "off" => log::LevelFilter::Off,
            _ => log::LevelFilter::Info,
        };
        android_logger::init_once(
            android_logger::Config::default()
                .with_tag("proxim")
                .with_max_level(level),
        );
    }
}
