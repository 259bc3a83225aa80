package dev.proxim.sample

import android.app.Application
import dev.proxim.android.Proxim

/** Loads libproxim.so once, before any Proxim call (see [Proxim.init]). */
class SampleApp : Application() {
    override fun onCreate() {
        super.onCreate()
        Proxim.init(logLevel = "info")
    }
}
