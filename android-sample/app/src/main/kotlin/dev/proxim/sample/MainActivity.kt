package dev.proxim.sample

import android.os.Bundle
import androidx.activity.result.contract.ActivityResultContracts
import androidx.activity.viewModels
import androidx.appcompat.app.AppCompatActivity
import androidx.lifecycle.Lifecycle
import androidx.lifecycle.lifecycleScope
import androidx.lifecycle.repeatOnLifecycle
import dev.proxim.sample.databinding.ActivityMainBinding
import kotlinx.coroutines.launch

/** One screen: server URL, code, connect, live state and path, message, file with progress. */
class MainActivity : AppCompatActivity() {
    private val model: MainViewModel by viewModels()
    private lateinit var views: ActivityMainBinding

    private val pickFile = registerForActivityResult(ActivityResultContracts.GetContent()) { uri ->
        uri?.let(model::sendFile)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        views = ActivityMainBinding.inflate(layoutInflater)
        setContentView(views.root)

        views.connect.setOnClickListener {
            if (model.ui.value.phase == Phase.CONNECTED) {
                model.disconnect()
            } else {
                model.connectOrCancel(views.serverUrl.text.toString(), views.code.text.toString())
            }
        }
        views.send.setOnClickListener {
            model.sendText(views.message.text.toString())
            views.message.text.clear()
        }
        views.sendFile.setOnClickListener { pickFile.launch("*/*") }

        // Collect only while visible; the ViewModel keeps the connection across rotations.
        lifecycleScope.launch {
            repeatOnLifecycle(Lifecycle.State.STARTED) {
                model.ui.collect(::render)
            }
        }
    }

    private fun render(ui: UiState) {
        views.connect.setText(
            when (ui.phase) {
                Phase.IDLE -> R.string.connect
                Phase.PAIRING -> R.string.cancel
                Phase.CONNECTED -> R.string.disconnect
            }
        )
        views.serverUrl.isEnabled = ui.phase == Phase.IDLE
        views.code.isEnabled = ui.phase == Phase.IDLE
        views.send.isEnabled = ui.phase == Phase.CONNECTED
        views.sendFile.isEnabled = ui.phase == Phase.CONNECTED && ui.progress == null
        views.state.text = getString(R.string.app_name) + ": " + ui.state
        views.path.text = ui.path
        views.progress.progress = ((ui.progress ?: 0f) * 1000).toInt()
        views.log.text = ui.log.joinToString("\n")
    }
}
