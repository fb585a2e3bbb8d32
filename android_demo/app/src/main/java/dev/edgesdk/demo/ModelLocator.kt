package dev.edgesdk.demo

import android.content.Context
import java.io.File
import java.io.FileNotFoundException

/**
 * Where the bundle comes from, in order:
 *  1. the app's external files directory (`adb push` target for large bundles, no root needed):
 *     /sdcard/Android/data/<applicationId>/files/model.litertlm (+ .manifest.json);
 *  2. the APK's assets (small bundles placed by `edge-sdk bundle --android`), copied once to
 *     internal storage because the engine opens the model by path.
 * The names match edge_sdk/bundle/android.py.
 */
object ModelLocator {
    const val MODEL_NAME = "model.litertlm"
    const val MANIFEST_NAME = "$MODEL_NAME.manifest.json"

    data class Located(val model: File, val manifest: File, val origin: String)

    fun pushDir(context: Context): File? = context.getExternalFilesDir(null)

    fun locate(context: Context): Located? {
        pushDir(context)?.let { dir ->
            val model = File(dir, MODEL_NAME)
            val manifest = File(dir, MANIFEST_NAME)
            if (model.isFile && manifest.isFile) return Located(model, manifest, "adb push ($dir)")
        }
        return fromAssets(context)
    }

    private fun fromAssets(context: Context): Located? {
        val dir = File(context.filesDir, "bundle").apply { mkdirs() }
        val model = File(dir, MODEL_NAME)
        val manifest = File(dir, MANIFEST_NAME)
        try {
            copyAsset(context, MANIFEST_NAME, manifest)          // small: always refreshed
            val expected = BundleManifest.read(manifest).bundleBytes
            if (!(model.isFile && model.length() == expected)) copyAsset(context, MODEL_NAME, model)
        } catch (e: FileNotFoundException) {
            return null
        }
        return Located(model, manifest, "APK assets")
    }

    /** Copies an asset to [dest] through a temp file and a rename (never a half-written model). */
    private fun copyAsset(context: Context, name: String, dest: File) {
        val tmp = File(dest.parentFile, "${dest.name}.tmp")
        context.assets.open(name).use { input ->
            tmp.outputStream().use { output -> input.copyTo(output, bufferSize = 1 shl 20) }
        }
        if (!tmp.renameTo(dest)) throw IllegalStateException("cannot move $tmp to $dest")
    }
}
