package dev.proxim.android

import android.content.Context
import android.os.Environment
import dev.proxim.CoreConfig
import dev.proxim.ProximCore
import dev.proxim.ProximListener
import dev.proxim.initLogging
import java.io.File

/**
 * Android entry point for Proxim.
 *
 * Call [init] once (e.g. in `Application.onCreate`) before anything else: it loads
 * `libproxim.so` with `System.loadLibrary`, which runs its `JNI_OnLoad` so that Proxim's runtime
 * threads attach to the JVM, and routes Proxim's logs to logcat (tag `proxim`).
 *
 * Threading: `suspend` functions of [ProximCore] and `dev.proxim.Connection` may be called from
 * any dispatcher except `Dispatchers.Unconfined`. The [ProximListener] is called on a Proxim
 * thread, never the main thread: post to the main thread (or update a StateFlow) from it.
 */
object Proxim {
    @Volatile private var initialized = false

    /** Load the native library and start logging to logcat. Idempotent. */
    @Synchronized
    fun init(logLevel: String = "info") {
        if (initialized) return
        System.loadLibrary("proxim")
        initLogging(logLevel)
        initialized = true
    }

    /**
     * A [CoreConfig] with Android defaults: the device id, identity key and trusted desktops
     * persist in the app's files dir (so `connect()` works after a restart), and received files
     * go to the app's external Downloads directory (no permission needed).
     */
    fun config(context: Context, serverUrl: String, deviceName: String = android.os.Build.MODEL): CoreConfig {
        val downloads = context.getExternalFilesDir(Environment.DIRECTORY_DOWNLOADS)
            ?: File(context.filesDir, "received")
        return CoreConfig(
            serverUrl = serverUrl,
            deviceName = deviceName,
            dataDir = File(context.filesDir, "proxim").path,
            downloadDir = downloads.path,
        )
    }

    /** [init], then a [ProximCore] for [config]. Close it when done (`use {}` or `close()`). */
    fun create(config: CoreConfig, listener: ProximListener? = null): ProximCore {
        init()
        return ProximCore(config, listener)
    }
}
