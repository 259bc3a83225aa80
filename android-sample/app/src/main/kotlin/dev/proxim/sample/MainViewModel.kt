package dev.proxim.sample

import android.app.Application
import android.content.Context
import android.net.ConnectivityManager
import android.net.LinkAddress
import android.net.LinkProperties
import android.net.Network
import android.net.Uri
import android.provider.OpenableColumns
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import dev.proxim.Connection
import dev.proxim.ConnectionEvent
import dev.proxim.ConnectionState
import dev.proxim.DeviceRole
import dev.proxim.PairingState
import dev.proxim.ProximCore
import dev.proxim.ProximException
import dev.proxim.ProximListener
import dev.proxim.android.Proxim
import java.io.File
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.flow.update
import kotlinx.coroutines.isActive
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext

/** What the screen shows. */
data class UiState(
    val phase: Phase = Phase.IDLE,
    val state: String = "not connected",
    val path: String = "",
    /** 0..1 while a file is on its way, else null. */
    val progress: Float? = null,
    val log: List<String> = emptyList(),
)

enum class Phase { IDLE, PAIRING, CONNECTED }

/**
 * Owns the [ProximCore] and the [Connection]. Every coroutine runs in [viewModelScope], so
 * leaving the screen for good cancels a pairing in progress (the desktop sees it withdrawn) and
 * [onCleared] closes the connection. Proxim objects are only touched on the main thread; the
 * listener, called on a Proxim thread, only updates the thread-safe [MutableStateFlow] or
 * hops to the main thread.
 */
class MainViewModel(app: Application) : AndroidViewModel(app) {
    private val _ui = MutableStateFlow(UiState())
    val ui: StateFlow<UiState> = _ui.asStateFlow()

    private var core: ProximCore? = null
    private var coreUrl: String? = null
    private var connection: Connection? = null
    private var pairJob: Job? = null
    private var statsJob: Job? = null
    private var networkCallback: ConnectivityManager.NetworkCallback? = null

    private val listener = object : ProximListener {
        // Called on a Proxim thread, in order.
        override fun onPairingState(state: PairingState) {
            when (state) {
                is PairingState.Pairing -> note("waiting for the desktop to accept…")
                is PairingState.Connected -> note("paired with ${state.peerName}")
                is PairingState.Failed -> note("pairing failed: ${state.reason}")
                is PairingState.Cancelled -> note("pairing cancelled")
            }
        }

        override fun onConnectionEvent(connectionId: ULong, event: ConnectionEvent) {
            when (event) {
                is ConnectionEvent.StateChanged ->
                    _ui.update { it.copy(state = event.new.name.lowercase()) }
                is ConnectionEvent.TextReceived -> note("< ${event.text}")
                is ConnectionEvent.BytesReceived -> note("< ${event.bytes.size} bytes")
                is ConnectionEvent.FileProgress -> {
                    val p = event.progress
                    val fraction = if (p.total == 0uL) 1f else p.bytesDone.toFloat() / p.total.toFloat()
                    _ui.update { it.copy(progress = fraction) }
                }
                is ConnectionEvent.FileReceived ->
                    note("received ${event.file.path} (${event.file.bytes} bytes, sha256 verified)")
                is ConnectionEvent.FileFailed -> note("file ${event.direction.name.lowercase()} failed: ${event.reason}")
                is ConnectionEvent.ChannelOpened -> note("the desktop opened channel ${event.label}")
                is ConnectionEvent.Reconnecting ->
                    note("reconnecting (attempt ${event.attempt}): ${event.reason}")
                is ConnectionEvent.PathChanged ->
                    _ui.update { it.copy(path = event.stats.path.name.lowercase()) }
                is ConnectionEvent.Closed -> {
                    note("connection closed: ${event.reason}")
                    viewModelScope.launch { release() }
                }
            }
        }
    }

    /**
     * Pair with the desktop showing [code] (or its QR link); with no code, reconnect to the
     * desktop paired most recently, without a code. A second tap while pairing cancels.
     */
    fun connectOrCancel(serverUrl: String, code: String) {
        if (pairJob?.isActive == true) {
            pairJob?.cancel() // drops the Rust future: the desktop's prompt closes as cancelled
            return
        }
        if (connection != null) return
        pairJob = viewModelScope.launch {
            _ui.update { it.copy(phase = Phase.PAIRING, state = "pairing") }
            try {
                val core = coreFor(serverUrl.trim())
                val opened = if (code.isNotBlank()) {
                    core.pair(code.trim())
                } else {
                    // The trust list is a file: read it off the main thread.
                    val desktop = withContext(Dispatchers.IO) { core.trustedDevices() }
                        .filter { it.role == DeviceRole.DESKTOP }
                        .maxByOrNull { it.lastSeen }
                    if (desktop == null) {
                        note("enter the code the desktop shows")
                        return@launch
                    }
                    note("reconnecting to ${desktop.name}…")
                    core.connect(desktop.deviceId)
                }
                connection = opened
                _ui.update { it.copy(phase = Phase.CONNECTED, state = opened.state().name.lowercase()) }
                note("connected to ${opened.peerName()} in ${opened.setupTimeMs()} ms")
                // After a code pairing both screens show these digits: different ones mean
                // someone is in the middle.
                opened.comparisonCode()?.let { note("the desktop should show $it") }
                watchStats(opened)
                watchNetwork()
            } catch (e: ProximException) {
                note(describe(e))
                _ui.update { it.copy(phase = Phase.IDLE, state = "not connected") }
            } finally {
                if (connection == null) _ui.update { it.copy(phase = Phase.IDLE, state = "not connected") }
            }
        }
    }

    fun sendText(text: String) {
        val connection = connection ?: return
        if (text.isBlank()) return
        viewModelScope.launch {
            try {
                connection.sendText(text)
                note("> $text")
            } catch (e: ProximException) {
                note("send failed: ${describe(e)}")
            }
        }
    }

    /** Cached copies of documents whose transfer was cut short: sending one again resumes. */
    private val cutShort = mutableMapOf<Uri, java.io.File>()

    /**
     * Copy the picked document to the cache (Proxim sends from a path), then send it. A copy
     * whose transfer was cut short is kept and sent again as it is (same bytes, same time):
     * the desktop then receives only what it is missing.
     */
    fun sendFile(uri: Uri) {
        val connection = connection ?: return
        viewModelScope.launch {
            try {
                val file = cutShort.remove(uri)?.takeIf { it.exists() }
                    ?: withContext(Dispatchers.IO) { copyToCache(uri) }
                _ui.update { it.copy(progress = 0f) }
                try {
                    val report = connection.sendFile(file.path)
                    val resumed = if (report.resumedFrom > 0UL) " (resumed at ${report.resumedFrom})" else ""
                    note("sent ${report.name}: ${report.bytes} bytes in ${report.elapsedMs} ms, verified$resumed")
                    withContext(Dispatchers.IO) { file.delete() }
                } catch (e: ProximException.Transfer) {
                    if (e.resumable) cutShort[uri] = file else withContext(Dispatchers.IO) { file.delete() }
                    throw e
                }
            } catch (e: ProximException) {
                val again = if (e is ProximException.Transfer && e.resumable) "; send it again to resume" else ""
                note("file failed: ${describe(e)}$again")
            } finally {
                _ui.update { it.copy(progress = null) }
            }
        }
    }

    fun disconnect() {
        val connection = connection ?: return
        viewModelScope.launch {
            try {
                connection.disconnect()
            } catch (e: ProximException) {
                note("disconnect: ${describe(e)}")
            }
            release()
        }
    }

    override fun onCleared() {
        // viewModelScope is already cancelled here; close() does not block.
        unwatchNetwork()
        connection?.close()
        core?.close()
    }

    /**
     * Tell the connection when the default network changes (Wi-Fi to cellular and back, an
     * address that comes or goes): it restarts ICE on the addresses there are then, and the
     * transfer in flight carries on. The callback's first onAvailable is the network the
     * connection started on, not a change.
     */
    private fun watchNetwork() {
        val manager = getApplication<Application>()
            .getSystemService(Context.CONNECTIVITY_SERVICE) as ConnectivityManager
        var current: Network? = null
        var addresses: List<LinkAddress>? = null
        val callback = object : ConnectivityManager.NetworkCallback() {
            override fun onAvailable(network: Network) {
                val changed = current != null && current != network
                if (current != network) addresses = null
                current = network
                if (changed) changed("now on another network")
            }

            override fun onLost(network: Network) {
                if (network == current) changed("network lost")
            }

            // Also called right after onAvailable: only a change of addresses counts.
            override fun onLinkPropertiesChanged(network: Network, properties: LinkProperties) {
                if (network != current) return
                val now = properties.linkAddresses
                if (addresses != null && addresses != now) changed("addresses changed")
                addresses = now
            }
        }
        manager.registerDefaultNetworkCallback(callback)
        networkCallback = callback
    }

    /** Called on a ConnectivityManager thread: hop to the main thread, where Proxim is used. */
    private fun changed(why: String) {
        viewModelScope.launch {
            val connection = connection ?: return@launch
            note("network: $why")
            try {
                connection.networkChanged()
            } catch (e: ProximException) {
                note("no reconnect: ${describe(e)}")
            }
        }
    }

    private fun unwatchNetwork() {
        val callback = networkCallback ?: return
        networkCallback = null
        val manager = getApplication<Application>()
            .getSystemService(Context.CONNECTIVITY_SERVICE) as ConnectivityManager
        manager.unregisterNetworkCallback(callback)
    }

    private fun release() {
        unwatchNetwork()
        statsJob?.cancel()
        connection?.close()
        connection = null
        _ui.update { it.copy(phase = Phase.IDLE, state = "not connected", path = "", progress = null) }
    }

    /** Refresh the path type and counters every two seconds while connected. */
    private fun watchStats(connection: Connection) {
        statsJob?.cancel()
        statsJob = viewModelScope.launch {
            while (isActive && connection.state() != ConnectionState.CLOSED) {
                try {
                    val s = connection.stats()
                    val rtt = s.rttMicros?.let { " rtt ${it / 1000u}.${(it % 1000u) / 100u} ms" } ?: ""
                    _ui.update {
                        it.copy(path = "${s.path.name.lowercase()} ${s.local.address} → ${s.remote.address}$rtt, " +
                            "${s.bytesSent} B out, ${s.bytesReceived} B in")
                    }
                } catch (e: ProximException) {
                    break
                }
                delay(2_000)
            }
        }
    }

    private fun coreFor(serverUrl: String): ProximCore {
        val existing = core
        if (existing != null && coreUrl == serverUrl) return existing
        existing?.close()
        return Proxim.create(Proxim.config(getApplication(), serverUrl), listener).also {
            core = it
            coreUrl = serverUrl
        }
    }

    private fun copyToCache(uri: Uri): File {
        val resolver = getApplication<Application>().contentResolver
        val name = resolver.query(uri, arrayOf(OpenableColumns.DISPLAY_NAME), null, null, null)?.use { c ->
            if (c.moveToFirst()) c.getString(0) else null
        } ?: "file"
        val target = File(getApplication<Application>().cacheDir, File(name).name)
        resolver.openInputStream(uri).use { input ->
            requireNotNull(input) { "cannot open $uri" }
            target.outputStream().use { input.copyTo(it) }
        }
        return target
    }

    private fun note(line: String) {
        _ui.update { it.copy(log = (it.log + line).takeLast(50)) }
    }

    private fun describe(e: ProximException): String = when (e) {
        is ProximException.InvalidCode -> "that is not a valid code"
        is ProximException.UnknownCode -> "no desktop shows this code"
        is ProximException.CodeUsed, is ProximException.CodeExpired ->
            "that code is no longer valid: enter the one the desktop shows now"
        is ProximException.Intercepted ->
            "could not verify the desktop (a mistyped code, or someone in between): ${e.reason}"
        is ProximException.NotTrusted -> "not paired with that desktop any more: enter its code"
        is ProximException.DesktopOffline -> "the desktop is not online"
        is ProximException.Rejected -> "the desktop said no"
        is ProximException.TimedOut -> "the desktop did not answer"
        is ProximException.ServerUnreachable -> "cannot reach the server: ${e.reason}"
        is ProximException.ConnectionFailed -> "no direct connection: ${e.reason}"
        is ProximException.Cancelled -> "cancelled"
        else -> e.message ?: e.toString()
    }
}
