// Kotlin tests of the Proxim bindings, run on the host JVM by scripts/test-kotlin.sh against a
// real `proxim serve` and real `proxim desktop` peers. Everything crosses the generated uniffi
// bindings exactly as an Android app would use them.
//
// Environment (set by the script):
//   PROXIM_SERVER       ws://127.0.0.1:PORT/ws
//   PROXIM_HTTP         http://127.0.0.1:PORT (monitoring API)
//   PROXIM_ADMIN_TOKEN  the server's admin token (for /api/sessions)
//   ACCEPT_CODE         code of a desktop running --accept --echo
//   ACCEPT_DOWNLOADS    that desktop's --download-dir
//   ACCEPT2_CODE        a second --accept --echo desktop (the server limits requests per desktop)
//   REJECT_CODE         code of a desktop running --reject
//   SILENT_CODE         code of a desktop that never answers (prompts on a stdin nobody writes)
//   SILENT_LOG          that desktop's stdout
//   TRUST_CODE          code of an --accept --echo desktop with its own --data-dir, for the
//                       trusted-reconnect tests
//   TRUST_DATA          that desktop's --data-dir
//   PROXIM_BIN          the `proxim` CLI (`proxim devices --data-dir DIR revoke ID`)
//   WRONG_CODE          code of an --accept --echo desktop whose code the wrong-secret test burns
//   WRONG_LOG           that desktop's stdout (it prints `pairing code: …` on every new code)
//   ACCEPT_LINK         the ACCEPT desktop's QR link (`pairing link: proxim://pair?…`)
//   WORK_DIR            scratch directory
//
// Codes are `ROUTING-SECRET` (`K7P2QX-4HT9M`): the server sees only the routing part.
//
// Output: one `PASS name (ms)` / `FAIL name: why` line per test, then `N passed, M failed`.

import dev.proxim.*
import java.io.File
import java.net.HttpURLConnection
import java.net.URI
import java.security.MessageDigest
import java.util.Random
import kotlinx.coroutines.*
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.flow.update
import kotlin.system.exitProcess

// -----------------------------------------------------------------------------------------------
// The tests
// -----------------------------------------------------------------------------------------------

val tests: List<Pair<String, suspend () -> Unit>> = listOf(
    "pair succeeds and a message round-trips" to ::pairAndEcho,
    "a file of a few MiB arrives byte-identical with progress" to ::fileTransfer,
    "a rejecting desktop maps to ProximException.Rejected" to ::rejected,
    "a malformed code maps to InvalidCode, an unknown one to UnknownCode" to ::wrongCode,
    "a code pairing is remembered; a new core connect()s without a code" to ::pairThenConnect,
    "after revokeDevice() connect() maps to NotTrusted" to ::revokeThenNotTrusted,
    "a desktop that revoked this phone: connect() maps to NotTrusted" to ::revokedByDesktop,
    "a wrong secret maps to Intercepted and burns the code (then CodeUsed)" to ::wrongSecret,
    "pairing with the QR link uses the link's server" to ::pairWithLink,
    "an unreachable server maps to ServerUnreachable" to ::unreachableServer,
    "cancelling pair() withdraws the request and leaves nothing pending" to ::cancelPair,
    "20 ProximCore instances pair at once" to ::twentyAtOnce,
    "the listener sees states in a valid order" to ::stateOrder,
    "closing twice is harmless" to ::closeTwice,
    "networkChanged() restarts ICE: Reconnecting, a new PathChanged, messages still flow" to ::networkChange,
    "a cancelled sendFile keeps what arrived; sending again resumes it" to ::cancelThenResume,
)

suspend fun pairAndEcho() {
    val recorder = Recorder()
    newCore("kt-echo", recorder).use { core ->
        core.pair(env("ACCEPT_CODE")).use { connection ->
            check(connection.peerName().isNotEmpty()) { "no peer name" }
            val text = "hello from kotlin ${randomTag()}"
            connection.sendText(text)
            recorder.awaitConnectionEvent(connection.id()) {
                it is ConnectionEvent.TextReceived && it.text == text
            }
            val stats = connection.stats()
            check(stats.path == PathType.HOST) { "loopback path should be HOST, got ${stats.path}" }
            check(stats.bytesSent >= text.length.toULong()) { "bytesSent ${stats.bytesSent}" }
            check(stats.bytesReceived >= text.length.toULong()) { "bytesReceived ${stats.bytesReceived}" }
            check(stats.local.address.substringAfterLast(':').toInt() > 0) { "local ${stats.local}" }
            check(stats.remote.address.substringAfterLast(':').toInt() > 0) { "remote ${stats.remote}" }
            check(stats.local.protocol == "udp") { "protocol ${stats.local.protocol}" }
            check(connection.state() == ConnectionState.CONNECTED) { "state ${connection.state()}" }
            recorder.awaitConnectionEvent(connection.id()) { it is ConnectionEvent.PathChanged }
            val path = recorder.connectionEvents(connection.id())
                .filterIsInstance<ConnectionEvent.PathChanged>().first()
            check(path.stats.path == PathType.HOST) { "PathChanged path ${path.stats.path}" }
            check(path.stats.local.relayProtocol == null) { "relayProtocol ${path.stats.local.relayProtocol}" }
            connection.disconnect()
        }
    }
}

suspend fun networkChange() {
    val recorder = Recorder()
    newCore("kt-netchange", recorder).use { core ->
        core.pair(env("ACCEPT_CODE")).use { connection ->
            recorder.awaitConnectionEvent(connection.id()) { it is ConnectionEvent.PathChanged }
            // What an app does from ConnectivityManager.NetworkCallback: the phone stays on
            // signaling while connected, so the restart is signaled to the desktop.
            connection.networkChanged()
            recorder.awaitConnectionEvent(connection.id()) {
                it is ConnectionEvent.Reconnecting && it.attempt == 1u && it.reason.contains("network")
            }
            withTimeout(30_000) {
                while (recorder.connectionEvents(connection.id()).count { it is ConnectionEvent.PathChanged } < 2) {
                    delay(20)
                }
            }
            val events = recorder.connectionEvents(connection.id())
            val reconnecting = events.indexOfFirst { it is ConnectionEvent.Reconnecting }
            val secondPath = events.withIndex().filter { it.value is ConnectionEvent.PathChanged }[1].index
            check(reconnecting < secondPath) { "PathChanged before Reconnecting: $events" }
            check(connection.state() == ConnectionState.CONNECTED) { "state ${connection.state()}" }
            val text = "after the restart ${randomTag()}"
            connection.sendText(text)
            recorder.awaitConnectionEvent(connection.id()) {
                it is ConnectionEvent.TextReceived && it.text == text
            }
        }
    }
}

suspend fun fileTransfer() {
    val recorder = Recorder()
    val size = 4 * 1024 * 1024 + 12345
    val name = "kt-${randomTag()}.bin"
    val source = File(env("WORK_DIR"), name)
    val bytes = ByteArray(size).also { Random().nextBytes(it) }
    source.writeBytes(bytes)
    val expected = sha256(bytes)
    newCore("kt-file", recorder).use { core ->
        core.pair(env("ACCEPT_CODE")).use { connection ->
            val report = connection.sendFile(source.path)
            check(report.sha256 == expected) { "report sha256 ${report.sha256} != $expected" }
            check(report.bytes == size.toULong()) { "report bytes ${report.bytes}" }
            // Progress: some updates, never decreasing, the last one complete.
            recorder.awaitConnectionEvent(connection.id()) {
                it is ConnectionEvent.FileProgress && it.progress.bytesDone == size.toULong()
            }
            val progress = recorder.connectionEvents(connection.id())
                .filterIsInstance<ConnectionEvent.FileProgress>()
            check(progress.all { it.direction == TransferDirection.SENDING }) { "direction" }
            check(progress.size >= 3) { "only ${progress.size} progress events" }
            check(progress.zipWithNext().all { (a, b) -> a.progress.bytesDone <= b.progress.bytesDone }) {
                "progress went backwards"
            }
            check(progress.all { it.progress.total == size.toULong() && it.progress.name == name }) {
                "progress names the wrong file: ${progress.first()}"
            }
            connection.disconnect()
        }
    }
    // The desktop acknowledged only after storing and verifying: the file is there now.
    val received = File(env("ACCEPT_DOWNLOADS"), name)
    check(received.isFile) { "$received missing; download dir has ${File(env("ACCEPT_DOWNLOADS")).list()?.toList()}" }
    val got = sha256(received.readBytes())
    check(got == expected) { "received file differs: $got != $expected" }
}

suspend fun cancelThenResume() {
    val recorder = Recorder()
    val size = 64 * 1024 * 1024
    val cutAt = 4UL * 1024UL * 1024UL
    val name = "kt-resume-${randomTag()}.bin"
    val source = File(env("WORK_DIR"), name)
    val bytes = ByteArray(size).also { Random().nextBytes(it) }
    source.writeBytes(bytes)
    val expected = sha256(bytes)
    val downloads = File(env("ACCEPT_DOWNLOADS"))
    newCore("kt-resume", recorder).use { core ->
        core.pair(env("ACCEPT_CODE")).use { connection ->
            coroutineScope {
                val first = async { connection.sendFile(source.path) }
                withTimeout(30_000) {
                    while (recorder.connectionEvents(connection.id()).none {
                            it is ConnectionEvent.FileProgress && it.progress.bytesDone >= cutAt
                        }
                    ) {
                        check(!first.isCompleted) { "the first send ended before the cut: ${runCatching { first.await() }}" }
                        delay(1)
                    }
                }
                // What an app does when the user pauses (or the screen goes away).
                first.cancel()
                val outcome = runCatching { first.await() }.exceptionOrNull()
                check(outcome is CancellationException) { "the cancelled send ended with $outcome" }
            }
            // The desktop keeps what arrived as a hidden part file, and lets go of it.
            withTimeout(10_000) {
                while (downloads.list()?.none { it.startsWith(".$name.") && it.endsWith(".part") } != false) {
                    delay(10)
                }
            }
            val report = connection.sendFile(source.path)
            check(report.sha256 == expected) { "report sha256 ${report.sha256} != $expected" }
            check(report.resumedFrom > 0UL && report.resumedFrom < size.toULong()) {
                "resumedFrom ${report.resumedFrom}: the second send did not resume"
            }
            connection.disconnect()
        }
    }
    val received = File(downloads, name)
    check(received.isFile) { "$received missing; download dir has ${downloads.list()?.toList()}" }
    check(sha256(received.readBytes()) == expected) { "the resumed file differs" }
    val leftovers = downloads.list()?.filter { it.contains(name) && it != name }.orEmpty()
    check(leftovers.isEmpty()) { "left beside the file: $leftovers" }
}

suspend fun rejected() {
    val recorder = Recorder()
    newCore("kt-reject", recorder).use { core ->
        val error = expectThrows<ProximException> { core.pair(env("REJECT_CODE")) }
        check(error is ProximException.Rejected) { "expected Rejected, got $error" }
    }
    recorder.awaitPairing { it is PairingState.Failed }
    val states = recorder.pairingStates()
    check(states.first() == PairingState.Pairing) { "states $states" }
    check(states.none { it is PairingState.Connected }) { "states $states" }
}

suspend fun wrongCode() {
    newCore("kt-wrong-code", null).use { core ->
        val malformed = expectThrows<ProximException> { core.pair("0O1!") }
        check(malformed is ProximException.InvalidCode) { "expected InvalidCode, got $malformed" }
        // A routing part alone (the old code format) lacks the secret.
        val noSecret = expectThrows<ProximException> { core.pair(env("ACCEPT_CODE").substringBefore('-').take(6)) }
        check(noSecret is ProximException.InvalidCode) { "expected InvalidCode without a secret, got $noSecret" }
        val unknown = expectThrows<ProximException> { core.pair(unusedCode()) }
        check(unknown is ProximException.UnknownCode) { "expected UnknownCode, got $unknown" }
    }
}

suspend fun pairThenConnect() {
    val dataDir = newDataDir("kt-trust")
    val recorder = Recorder()
    var desktopId = ""
    var identity = ""
    coreAt("kt-trust", dataDir, recorder).use { core ->
        check(core.trustedDevices().isEmpty()) { "a fresh data dir trusts ${core.trustedDevices()}" }
        core.pair(env("TRUST_CODE")).use { connection ->
            check(connection.authMethod() == AuthMethod.CODE) { "authMethod ${connection.authMethod()}" }
            val comparison = connection.comparisonCode()
            check(comparison != null && Regex("[0-9]{3} [0-9]{3}").matches(comparison)) {
                "comparisonCode `$comparison`"
            }
            identity = connection.peerIdentity()
            check(identity.isNotBlank()) { "no peer identity" }
            desktopId = connection.peerDeviceId()
            val trusted = core.trustedDevices()
            check(trusted.size == 1) { "trusted devices $trusted" }
            val desktop = trusted.single()
            check(desktop.deviceId == desktopId) { "deviceId ${desktop.deviceId} != $desktopId" }
            check(desktop.role == DeviceRole.DESKTOP) { "role ${desktop.role}" }
            check(desktop.name == connection.peerName()) { "name ${desktop.name} != ${connection.peerName()}" }
            check(Regex("[0-9a-f]{64}").matches(desktop.publicKey)) { "publicKey ${desktop.publicKey}" }
            check(desktop.serverUrl == env("PROXIM_SERVER")) { "serverUrl ${desktop.serverUrl}" }
            check(desktop.pairedAt > 0uL && desktop.lastSeen >= desktop.pairedAt) { "times $desktop" }
            connection.disconnect()
        }
    }
    // The app restarted: a new core with the same data dir reaches the desktop without a code.
    val again = Recorder()
    coreAt("kt-trust", dataDir, again).use { core ->
        check(core.trustedDevices().map { it.deviceId } == listOf(desktopId)) {
            "the new core trusts ${core.trustedDevices()}"
        }
        core.connect(desktopId).use { connection ->
            check(connection.authMethod() == AuthMethod.TRUSTED) { "authMethod ${connection.authMethod()}" }
            check(connection.comparisonCode() == null) { "comparisonCode ${connection.comparisonCode()}" }
            check(connection.peerDeviceId() == desktopId) { "connected to ${connection.peerDeviceId()}" }
            check(connection.peerIdentity() == identity) { "identity ${connection.peerIdentity()} != $identity" }
            val text = "trusted hello ${randomTag()}"
            connection.sendText(text)
            again.awaitConnectionEvent(connection.id()) {
                it is ConnectionEvent.TextReceived && it.text == text
            }
            connection.disconnect()
        }
    }
    val states = again.pairingStates()
    check(states.size == 2 && states[0] == PairingState.Pairing && states[1] is PairingState.Connected) {
        "connect() states $states"
    }
}

suspend fun revokeThenNotTrusted() {
    val dataDir = newDataDir("kt-revoke")
    var desktopId = ""
    coreAt("kt-revoke", dataDir, null).use { core ->
        core.pair(env("TRUST_CODE")).use { connection ->
            desktopId = connection.peerDeviceId()
            connection.disconnect()
        }
    }
    val recorder = Recorder()
    coreAt("kt-revoke", dataDir, recorder).use { core ->
        val removed = core.revokeDevice(desktopId)
        check(removed.map { it.deviceId } == listOf(desktopId)) { "revokeDevice removed $removed" }
        check(core.trustedDevices().isEmpty()) { "still trusted: ${core.trustedDevices()}" }
        check(core.revokeDevice(desktopId).isEmpty()) { "revoked twice" }
        val error = expectThrows<ProximException> { core.connect(desktopId) }
        check(error is ProximException.NotTrusted) { "expected NotTrusted, got $error" }
    }
    recorder.awaitPairing { it is PairingState.Failed }
    check(recorder.pairingStates().first() == PairingState.Pairing) { "states ${recorder.pairingStates()}" }
}

suspend fun revokedByDesktop() {
    val name = "kt-revoked-${randomTag()}"
    val dataDir = newDataDir(name)
    var desktopId = ""
    coreAt(name, dataDir, null).use { core ->
        core.pair(env("TRUST_CODE")).use { connection ->
            desktopId = connection.peerDeviceId()
            connection.disconnect()
        }
    }
    // On the desktop: `proxim devices --data-dir DIR revoke PHONE` (the running desktop rereads
    // its trust list on every request).
    val phones = Regex("\\{[^{}]*\\}").findAll(proxim("devices", "--data-dir", env("TRUST_DATA"), "--json"))
        .map { it.value }.filter { it.contains("\"name\": \"$name\"") }.toList()
    check(phones.size == 1 && phones[0].contains("\"role\": \"phone\"")) { "the desktop lists $phones for $name" }
    val phoneId = Regex("\"device_id\": \"([^\"]+)\"").find(phones[0])?.groupValues?.get(1)
        ?: error("no device_id in ${phones[0]}")
    proxim("devices", "--data-dir", env("TRUST_DATA"), "revoke", phoneId)
    coreAt(name, dataDir, null).use { core ->
        check(core.trustedDevices().map { it.deviceId } == listOf(desktopId)) { "the phone still trusts the desktop" }
        val error = expectThrows<ProximException> { core.connect(desktopId) }
        check(error is ProximException.NotTrusted) { "expected NotTrusted, got $error" }
    }
}

suspend fun wrongSecret() {
    val code = env("WRONG_CODE")
    val routing = code.substringBefore('-')
    val secret = code.substringAfter('-')
    val wrong = "$routing-${differentSecret(secret)}"
    val log = File(env("WRONG_LOG"))
    val recorder = Recorder()
    newCore("kt-wrong-secret", recorder).use { core ->
        val error = expectThrows<ProximException> { core.pair(wrong) }
        check(error is ProximException.Intercepted) { "expected Intercepted, got $error" }
        recorder.awaitPairing { it is PairingState.Failed }
        // The attempt burned the code: the desktop shows a new one, and the old one is used up.
        // Usually within milliseconds (the phone's abort); should that be lost, the desktop
        // burns it when its wait for the phone's confirmation times out (--connect-timeout, 15 s).
        pollUntil("the desktop to show a new code", timeoutMs = 30_000) { codesShown(log).any { it != code } }
        val fresh = codesShown(log).last()
        check(fresh != code && fresh.substringBefore('-') != routing) { "new code $fresh after $code" }
        val used = expectThrows<ProximException> { core.pair(code) }
        check(used is ProximException.CodeUsed) { "expected CodeUsed for the burned code, got $used" }
        // The new code works.
        core.pair(fresh).use { connection ->
            check(connection.authMethod() == AuthMethod.CODE) { "authMethod ${connection.authMethod()}" }
            connection.disconnect()
        }
    }
}

suspend fun pairWithLink() {
    val link = env("ACCEPT_LINK")
    check(link.startsWith("proxim://pair?")) { "link $link" }
    // The link names the server: the configured one is never contacted.
    val config = CoreConfig(
        serverUrl = "ws://127.0.0.1:1/ws",
        deviceName = "kt-link",
        dataDir = newDataDir("kt-link").path,
        pairTimeoutMs = 30_000uL,
    )
    val recorder = Recorder()
    ProximCore(config, recorder).use { core ->
        core.pair(link).use { connection ->
            check(connection.authMethod() == AuthMethod.CODE) { "authMethod ${connection.authMethod()}" }
            check(connection.comparisonCode() != null) { "no comparison code" }
            val text = "linked ${randomTag()}"
            connection.sendText(text)
            recorder.awaitConnectionEvent(connection.id()) {
                it is ConnectionEvent.TextReceived && it.text == text
            }
            check(core.trustedDevices().single().serverUrl == env("PROXIM_SERVER")) {
                "trusted ${core.trustedDevices()}"
            }
            connection.disconnect()
        }
    }
}

suspend fun unreachableServer() {
    val config = CoreConfig(serverUrl = "ws://127.0.0.1:1/ws", deviceName = "kt-nowhere")
    ProximCore(config).use { core ->
        val error = expectThrows<ProximException> { core.pair(env("ACCEPT_CODE")) }
        check(error is ProximException.ServerUnreachable) { "expected ServerUnreachable, got $error" }
    }
}

suspend fun cancelPair(): Unit = coroutineScope {
    val recorder = Recorder()
    val phone = "kt-cancel-${randomTag()}"
    val log = File(env("SILENT_LOG"))
    val promptsBefore = countPrompts(log)
    val core = newCore(phone, recorder)
    val job = launch(Dispatchers.Default) { core.pair(env("SILENT_CODE")) }
    // Wait until the request is really pending: the desktop shows it and the server lists it.
    pollUntil("the silent desktop to show the prompt") { countPrompts(log) > promptsBefore }
    pollUntil("the server to list the pending session") { pendingSessions(phone) > 0 }
    job.cancelAndJoin()
    check(job.isCancelled) { "pair() was not cancelled" }
    recorder.awaitPairing { it == PairingState.Cancelled }
    // The server ends the session and tells the desktop (pair_result cancelled). The `proxim
    // desktop` CLI cannot print that while it waits on stdin for y/N, so the server is the judge.
    pollUntil("the server to drop the pending session") { pendingSessions(phone) == 0 }
    core.close()
}

suspend fun twentyAtOnce(): Unit = coroutineScope {
    val count = 20
    val recorders = List(count) { Recorder() }
    val cores = List(count) { newCore("kt-crowd-$it", recorders[it]) }
    try {
        // The server takes at most 16 simultaneous requests per desktop: use two desktops.
        val codes = listOf(env("ACCEPT_CODE"), env("ACCEPT2_CODE"))
        val connections = cores.mapIndexed { i, core ->
            async(Dispatchers.IO) { core.pair(codes[i % 2]) }
        }.awaitAll()
        try {
            check(connections.map { it.id() }.toSet().size == count) { "connection ids are not unique" }
            connections.mapIndexed { i, connection ->
                async(Dispatchers.Default) {
                    val text = "crowd $i ${randomTag()}"
                    connection.sendText(text)
                    recorders[i].awaitConnectionEvent(connection.id()) {
                        it is ConnectionEvent.TextReceived && it.text == text
                    }
                }
            }.awaitAll()
        } finally {
            connections.map { async(Dispatchers.IO) { it.disconnect(); it.close() } }.awaitAll()
        }
    } finally {
        cores.forEach { it.close() }
    }
}

suspend fun stateOrder() {
    val recorder = Recorder()
    var connectionId = 0uL
    newCore("kt-order", recorder).use { core ->
        core.pair(env("ACCEPT_CODE")).use { connection ->
            connectionId = connection.id()
            connection.sendText("order ${randomTag()}")
            connection.disconnect()
            recorder.awaitConnectionEvent(connectionId) { it is ConnectionEvent.Closed }
        }
    }
    val pairing = recorder.pairingStates()
    check(pairing.size == 2 && pairing[0] == PairingState.Pairing) { "pairing states $pairing" }
    val connected = pairing[1]
    check(connected is PairingState.Connected && connected.connectionId == connectionId) {
        "pairing states $pairing"
    }
    val all = recorder.all()
    val connectedAt = all.indexOfFirst { it is Recorded.Pairing && it.state is PairingState.Connected }
    val firstEventAt = all.indexOfFirst { it is Recorded.Connection && it.id == connectionId }
    check(firstEventAt > connectedAt) { "a connection event came before PairingState.Connected: $all" }
    val events = recorder.connectionEvents(connectionId)
    check(events.last() is ConnectionEvent.Closed) { "the last event is not Closed: $events" }
    check(events.count { it is ConnectionEvent.Closed } == 1) { "Closed twice: $events" }
    val changes = events.filterIsInstance<ConnectionEvent.StateChanged>()
    changes.zipWithNext().forEach { (a, b) ->
        check(a.new == b.old) { "state jumped: ${a.old}->${a.new} then ${b.old}->${b.new}" }
    }
    changes.forEach { check(it.old != it.new) { "no-op transition $it" } }
    check(changes.none { it.old == ConnectionState.CLOSED }) { "left CLOSED: $changes" }
}

suspend fun closeTwice() {
    val core = newCore("kt-close", Recorder())
    val connection = core.pair(env("ACCEPT_CODE"))
    connection.disconnect()
    connection.disconnect()
    check(connection.state() == ConnectionState.CLOSED) { "state after disconnect: ${connection.state()}" }
    val late = expectThrows<ProximException> { connection.sendText("too late") }
    check(late is ProximException.Closed || late is ProximException.ConnectionFailed) { "got $late" }
    connection.close()
    connection.close()
    expectThrows<IllegalStateException> { connection.sendText("after close") }
    core.close()
    core.close()
    // A connection released without disconnect() first is closed in the background.
    newCore("kt-close-2", null).use { other ->
        other.pair(env("ACCEPT_CODE")).close()
    }
}

// -----------------------------------------------------------------------------------------------
// Runner
// -----------------------------------------------------------------------------------------------

fun main(args: Array<String>) {
    val only = args.toSet()
    var passed = 0
    var failed = 0
    runBlocking(Dispatchers.Default) {
        for ((name, test) in tests) {
            if (only.isNotEmpty() && only.none { name.contains(it) }) continue
            val started = System.nanoTime()
            try {
                withTimeout(90_000) { test() }
                passed++
                println("PASS $name (${(System.nanoTime() - started) / 1_000_000} ms)")
            } catch (e: Throwable) {
                failed++
                println("FAIL $name: $e")
                e.printStackTrace(System.out)
            }
        }
    }
    println("$passed passed, $failed failed")
    exitProcess(if (failed == 0 && passed > 0) 0 else 1)
}

// -----------------------------------------------------------------------------------------------
// Helpers
// -----------------------------------------------------------------------------------------------

sealed class Recorded {
    data class Pairing(val state: PairingState) : Recorded()
    data class Connection(val id: ULong, val event: ConnectionEvent) : Recorded()
}

/** A listener that records everything; tests wait on it without sleeping. */
class Recorder : ProximListener {
    private val events = MutableStateFlow<List<Recorded>>(emptyList())

    override fun onPairingState(state: PairingState) {
        events.update { it + Recorded.Pairing(state) }
    }

    override fun onConnectionEvent(connectionId: ULong, event: ConnectionEvent) {
        events.update { it + Recorded.Connection(connectionId, event) }
    }

    fun all(): List<Recorded> = events.value
    fun pairingStates() = all().filterIsInstance<Recorded.Pairing>().map { it.state }
    fun connectionEvents(id: ULong) =
        all().filterIsInstance<Recorded.Connection>().filter { it.id == id }.map { it.event }

    suspend fun awaitPairing(predicate: (PairingState) -> Boolean) =
        withTimeout(15_000) {
            events.first { list -> list.any { it is Recorded.Pairing && predicate(it.state) } }
        }

    suspend fun awaitConnectionEvent(id: ULong, predicate: (ConnectionEvent) -> Boolean) =
        withTimeout(30_000) {
            events.first { list ->
                list.any { it is Recorded.Connection && it.id == id && predicate(it.event) }
            }
        }
}

fun env(name: String): String = System.getenv(name) ?: error("environment variable $name is not set")

fun newDataDir(name: String): File = File(env("WORK_DIR"), "data-$name-${randomTag()}")

fun newCore(name: String, listener: ProximListener?): ProximCore =
    coreAt(name, newDataDir(name), listener)

fun coreAt(name: String, dataDir: File, listener: ProximListener?): ProximCore {
    return ProximCore(
        CoreConfig(
            serverUrl = env("PROXIM_SERVER"),
            deviceName = name,
            dataDir = dataDir.path,
            pairTimeoutMs = 30_000uL,
        ),
        listener,
    )
}

suspend inline fun <reified T : Throwable> expectThrows(block: suspend () -> Any?): T {
    try {
        val value = block()
        if (value is AutoCloseable) value.close()
    } catch (e: Throwable) {
        if (e is T) return e
        throw AssertionError("expected ${T::class.simpleName}, got $e", e)
    }
    throw AssertionError("expected ${T::class.simpleName}, nothing was thrown")
}

/** Poll a condition that has no event to wait on (another process's state), bounded. */
suspend fun pollUntil(what: String, timeoutMs: Long = 15_000, condition: () -> Boolean) {
    val deadline = System.currentTimeMillis() + timeoutMs
    while (!withContext(Dispatchers.IO) { condition() }) {
        if (System.currentTimeMillis() > deadline) throw AssertionError("timed out waiting for $what")
        delay(50)
    }
}

fun countPrompts(log: File): Int =
    if (log.exists()) Regex("wants to pair").findAll(log.readText()).count() else 0

/** Sessions the server lists as pending for the phone called `phone`. */
fun pendingSessions(phone: String): Int {
    val connection = URI(env("PROXIM_HTTP") + "/api/sessions?limit=1000").toURL().openConnection() as HttpURLConnection
    connection.setRequestProperty("Authorization", "Bearer " + env("PROXIM_ADMIN_TOKEN"))
    connection.connectTimeout = 2_000
    connection.readTimeout = 2_000
    val body = try {
        connection.inputStream.bufferedReader().readText()
    } finally {
        connection.disconnect()
    }
    return Regex("\\{[^{}]*\\}").findAll(body).count {
        it.value.contains("\"phone\":\"$phone\"") && it.value.contains("\"state\":\"pending\"")
    }
}

const val CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"

/** A well-formed code (`ROUTING-SECRET`) whose routing part no desktop shows. */
fun unusedCode(): String {
    val taken = listOf("ACCEPT_CODE", "ACCEPT2_CODE", "REJECT_CODE", "SILENT_CODE", "TRUST_CODE", "WRONG_CODE")
        .map { env(it).substringBefore('-') }.toSet()
    val length = env("ACCEPT_CODE").substringBefore('-').length
    while (true) {
        val routing = randomCodeChars(length)
        if (routing !in taken) return "$routing-${randomCodeChars(5)}"
    }
}

/** A secret of the same length as `secret` that differs from it in every character. */
fun differentSecret(secret: String): String =
    String(CharArray(secret.length) { i ->
        CODE_ALPHABET[(CODE_ALPHABET.indexOf(secret[i]) + 1 + Random().nextInt(CODE_ALPHABET.length - 1)) % CODE_ALPHABET.length]
    })

fun randomCodeChars(count: Int): String {
    val random = Random()
    return String(CharArray(count) { CODE_ALPHABET[random.nextInt(CODE_ALPHABET.length)] })
}

/** Every code a `proxim desktop` printed to `log` (`pairing code: …`), oldest first. */
fun codesShown(log: File): List<String> =
    if (log.exists()) {
        Regex("pairing code: ([0-9A-Z]+-[0-9A-Z]+)").findAll(log.readText()).map { it.groupValues[1] }.toList()
    } else {
        emptyList()
    }

/** Run the `proxim` CLI; its stdout. Fails on a non-zero exit. */
suspend fun proxim(vararg args: String): String = withContext(Dispatchers.IO) {
    val process = ProcessBuilder(listOf(env("PROXIM_BIN")) + args)
        .redirectError(ProcessBuilder.Redirect.INHERIT)
        .start()
    val out = process.inputStream.bufferedReader().readText()
    val status = process.waitFor()
    check(status == 0) { "proxim ${args.joinToString(" ")} exited with $status: $out" }
    out
}

fun sha256(bytes: ByteArray): String =
    MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it) }

fun randomTag(): String = java.lang.Long.toHexString(Random().nextLong() and 0xffffffffL)
