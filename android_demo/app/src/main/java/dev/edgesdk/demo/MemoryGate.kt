package dev.edgesdk.demo

import android.app.ActivityManager
import android.content.Context
import java.io.File

/** Memory checks: the manifest's planned peak against what the device has free, and our own VmHWM. */
object MemoryGate {
    data class Verdict(val ok: Boolean, val availBytes: Long, val requiredBytes: Long, val message: String)

    fun check(context: Context, manifest: BundleManifest): Verdict {
        val am = context.getSystemService(Context.ACTIVITY_SERVICE) as ActivityManager
        val info = ActivityManager.MemoryInfo()
        am.getMemoryInfo(info)
        val required = manifest.plannedPeakBytes
        val avail = info.availMem
        val source = "planned peak (${manifest.plannedSource}, context ${manifest.plannedContext})"
        return if (avail < required) {
            Verdict(false, avail, required,
                "Not loading the model: it needs ${mb(required)} ($source) but the device has only " +
                    "${mb(avail)} available. Close other apps, or bundle a smaller model / context.")
        } else {
            Verdict(true, avail, required, "memory ok: ${mb(avail)} available ≥ ${mb(required)} $source")
        }
    }

    /** The process's peak resident set size (VmHWM), in bytes; null when /proc is unreadable. */
    fun peakRssBytes(): Long? = procStatusKb("VmHWM")?.times(1024)

    fun currentRssBytes(): Long? = procStatusKb("VmRSS")?.times(1024)

    private fun procStatusKb(field: String): Long? = try {
        File("/proc/self/status").useLines { lines ->
            lines.firstOrNull { it.startsWith("$field:") }
                ?.substringAfter(':')?.trim()?.removeSuffix("kB")?.trim()?.toLongOrNull()
        }
    } catch (e: Exception) {
        null
    }

    fun mb(bytes: Long): String = String.format("%.1f MB", bytes / 1e6)
}
