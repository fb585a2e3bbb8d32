package dev.edgesdk.demo

import android.os.Bundle
import android.os.SystemClock
import android.widget.Button
import android.widget.EditText
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import androidx.lifecycle.lifecycleScope
import com.google.ai.edge.litertlm.Backend
import com.google.ai.edge.litertlm.Conversation
import com.google.ai.edge.litertlm.ConversationConfig
import com.google.ai.edge.litertlm.Engine
import com.google.ai.edge.litertlm.EngineConfig
import com.google.ai.edge.litertlm.SamplerConfig
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.flow.flowOn
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext

/**
 * Loads the edge-sdk bundle with LiteRT-LM (CPU backend), after checking the manifest's planned
 * peak memory against ActivityManager.MemoryInfo.availMem, then streams generated text and shows
 * tokens/s and the process's peak RSS (VmHWM).
 */
class MainActivity : AppCompatActivity() {
    private lateinit var status: TextView
    private lateinit var prompt: EditText
    private lateinit var generate: Button
    private lateinit var stats: TextView
    private lateinit var output: TextView

    private var engine: Engine? = null
    private var conversation: Conversation? = null

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        status = findViewById(R.id.status)
        prompt = findViewById(R.id.prompt)
        generate = findViewById(R.id.generate)
        stats = findViewById(R.id.stats)
        output = findViewById(R.id.output)
        generate.setOnClickListener { runPrompt(prompt.text.toString()) }
        lifecycleScope.launch { load() }
    }

    private suspend fun load() {
        val located = try {
            withContext(Dispatchers.IO) { ModelLocator.locate(this@MainActivity) }
        } catch (e: Exception) {
            status.text = "Cannot prepare the bundle: ${e.message}"
            return
        }
        if (located == null) {
            status.text = getString(R.string.no_model, ModelLocator.pushDir(this)?.absolutePath ?: "the app's files dir")
            return
        }
        val manifest = try {
            withContext(Dispatchers.IO) { BundleManifest.read(located.manifest) }
        } catch (e: Exception) {
            status.text = "Cannot read ${located.manifest.name}: ${e.message}"
            return
        }
        if (located.model.length() != manifest.bundleBytes) {
            status.text = "Bundle is ${located.model.length()} bytes, the manifest says ${manifest.bundleBytes}: " +
                "incomplete copy? Push it again."
            return
        }
        val gate = MemoryGate.check(this, manifest)
        if (!gate.ok) {
            status.text = gate.message   // refuse: do not even map the file
            return
        }
        status.text = "Loading ${located.model.name} from ${located.origin} (recipe ${manifest.recipe}, " +
            "context ${manifest.context}, KV ${manifest.kvCacheDtype})…\n${gate.message}"
        val t0 = SystemClock.elapsedRealtime()
        try {
            withContext(Dispatchers.Default) {
                val config = EngineConfig(
                    modelPath = located.model.absolutePath,
                    backend = Backend.CPU(),
                    maxNumTokens = manifest.maxNumTokens,   // never more than the bundle's KV cache
                    cacheDir = cacheDir.absolutePath,
                )
                // First launch: LiteRT-LM packs the weights into its XNNPACK weight cache and keeps
                // the packing buffers (~0.2 GB on E2B) for the engine's lifetime. A throw-away
                // engine builds the cache; the real one then maps the finished file, so the first
                // launch peaks no higher than every later one (docs/memory.md).
                val marker = java.io.File(cacheDir, "edge_sdk_weight_cache_${located.model.length()}_" +
                    "${located.model.lastModified()}")
                if (!marker.exists()) {
                    val builder = Engine(config)
                    try {
                        builder.initialize()
                    } finally {
                        builder.close()
                    }
                    marker.writeText(located.model.name)
                }
                val e = Engine(config)
                e.initialize()
                engine = e
                conversation = e.createConversation(
                    ConversationConfig(samplerConfig = SamplerConfig(topK = 1, topP = 1.0, temperature = 1.0))
                )
            }
        } catch (e: Exception) {
            status.text = "LiteRT-LM could not load the bundle: ${e.message}"
            return
        }
        val loadS = (SystemClock.elapsedRealtime() - t0) / 1000.0
        status.text = "Loaded in ${"%.2f".format(loadS)} s from ${located.origin}. ${gate.message}"
        showStats(tokens = 0, seconds = 0.0)
        generate.isEnabled = true
    }

    private fun runPrompt(text: String) {
        val conv = conversation ?: return
        if (text.isBlank()) return
        generate.isEnabled = false
        output.text = ""
        lifecycleScope.launch {
            var chunks = 0
            var first = 0L
            val start = SystemClock.elapsedRealtime()
            try {
                conv.sendMessageAsync(text).flowOn(Dispatchers.Default).collect { message ->
                    if (chunks == 0) first = SystemClock.elapsedRealtime()
                    chunks++   // LiteRT-LM streams one chunk per decoded token (held-back stop prefixes aside)
                    output.append(message.toString())
                    val decodeS = (SystemClock.elapsedRealtime() - first) / 1000.0
                    showStats(chunks, decodeS, ttftS = (first - start) / 1000.0)
                }
            } catch (e: Exception) {
                output.append("\n[error: ${e.message}]")
            } finally {
                generate.isEnabled = true
            }
        }
    }

    private fun showStats(tokens: Int, seconds: Double, ttftS: Double? = null) {
        val tps = if (tokens > 1 && seconds > 0) (tokens - 1) / seconds else 0.0
        val peak = MemoryGate.peakRssBytes()?.let { MemoryGate.mb(it) } ?: "n/a"
        val rss = MemoryGate.currentRssBytes()?.let { MemoryGate.mb(it) } ?: "n/a"
        stats.text = buildString {
            append("decode: %.1f tokens/s (%d tokens)".format(tps, tokens))
            if (ttftS != null) append(", first token after %.2f s".format(ttftS))
            append("\npeak RSS (VmHWM): $peak, RSS now: $rss")
        }
    }

    override fun onDestroy() {
        conversation?.close()
        engine?.close()
        conversation = null
        engine = null
        super.onDestroy()
    }
}
