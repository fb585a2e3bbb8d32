package dev.edgesdk.demo

import org.json.JSONObject
import java.io.File

/**
 * The `edge_sdk_manifest` that `edge-sdk bundle` writes beside every bundle
 * (`<bundle>.manifest.json`, byte for byte the document stored in the bundle's header).
 *
 * Every key this app reads is one of the [ManifestKeys] paths below; the SDK's test suite
 * (tests/test_android_demo.py) extracts them from this file and checks each one exists in a
 * manifest the SDK writes, so the two sides cannot drift apart silently.
 */
object ManifestKeys {
    const val FORMAT = "format"
    const val VERSION = "version"
    const val BUNDLE_BYTES = "bundle.bytes"
    const val RECIPE = "recipe"
    const val CONTEXT = "model.context"
    const val MAX_NUM_TOKENS = "model.max_num_tokens"
    const val KV_CACHE_DTYPE = "model.kv_cache.dtype"
    const val HAS_CHAT_TEMPLATE = "model.has_chat_template"
    const val PLANNED_PEAK_BYTES = "memory.planned_peak_bytes"
    const val PLANNED_SOURCE = "memory.planned_source"
    const val PLANNED_CONTEXT = "memory.planned_context"
    const val VALIDATED_BUDGET_BYTES = "memory.validated_budget_bytes"
    const val VALIDATED_PEAK_RSS_BYTES = "memory.validated_peak_rss_bytes"

    const val EXPECTED_FORMAT = "edge_sdk_manifest"
    const val SUPPORTED_VERSION = 1
}

class ManifestException(message: String) : Exception(message)

/** The fields of the manifest this app uses. */
data class BundleManifest(
    val bundleBytes: Long,
    val recipe: String?,
    val context: Int,
    val maxNumTokens: Int,
    val kvCacheDtype: String,
    val hasChatTemplate: Boolean,
    val plannedPeakBytes: Long,
    val plannedSource: String,
    val plannedContext: Int,
    val validatedBudgetBytes: Long?,
    val validatedPeakRssBytes: Long?,
) {
    companion object {
        fun read(file: File): BundleManifest = parse(file.readText(Charsets.UTF_8))

        fun parse(text: String): BundleManifest {
            val root = JSONObject(text)
            val format = root.optString(ManifestKeys.FORMAT)
            if (format != ManifestKeys.EXPECTED_FORMAT) {
                throw ManifestException("not an edge-sdk manifest (format '$format')")
            }
            val version = root.optInt(ManifestKeys.VERSION, -1)
            if (version != ManifestKeys.SUPPORTED_VERSION) {
                throw ManifestException("manifest version $version; this app reads ${ManifestKeys.SUPPORTED_VERSION}")
            }
            return BundleManifest(
                bundleBytes = root.long(ManifestKeys.BUNDLE_BYTES)!!,
                recipe = root.string(ManifestKeys.RECIPE),
                context = root.long(ManifestKeys.CONTEXT)!!.toInt(),
                maxNumTokens = root.long(ManifestKeys.MAX_NUM_TOKENS)!!.toInt(),
                kvCacheDtype = root.string(ManifestKeys.KV_CACHE_DTYPE) ?: "unknown",
                hasChatTemplate = root.bool(ManifestKeys.HAS_CHAT_TEMPLATE) ?: false,
                plannedPeakBytes = root.long(ManifestKeys.PLANNED_PEAK_BYTES)!!,
                plannedSource = root.string(ManifestKeys.PLANNED_SOURCE) ?: "unknown",
                plannedContext = root.long(ManifestKeys.PLANNED_CONTEXT)?.toInt() ?: 0,
                validatedBudgetBytes = root.long(ManifestKeys.VALIDATED_BUDGET_BYTES),
                validatedPeakRssBytes = root.long(ManifestKeys.VALIDATED_PEAK_RSS_BYTES),
            )
        }

        /** The value at a dotted path ("memory.planned_peak_bytes"); null when absent or JSON null. */
        private fun JSONObject.at(path: String): Any? {
            var node: Any? = this
            for (part in path.split('.')) {
                val obj = node as? JSONObject ?: return null
                if (!obj.has(part) || obj.isNull(part)) return null
                node = obj.get(part)
            }
            return node
        }

        private fun JSONObject.long(path: String): Long? = (at(path) as? Number)?.toLong()

        private fun JSONObject.string(path: String): String? = at(path) as? String

        private fun JSONObject.bool(path: String): Boolean? = at(path) as? Boolean
    }
}
