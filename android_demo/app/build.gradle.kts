plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.edgesdk.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.edgesdk.demo"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk {
            // LiteRT-LM ships arm64-v8a (phones) and x86_64 (emulator) native libraries.
            abiFilters += listOf("arm64-v8a", "x86_64")
        }
    }

    // The bundle is stored uncompressed (and page-aligned by zipalign) so it can be read straight
    // out of the APK; edge-sdk's scripts/apk_check.py proves the bytes survive packaging.
    androidResources {
        noCompress += listOf("litertlm")
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    kotlinOptions {
        jvmTarget = "17"
    }

    packaging {
        jniLibs {
            useLegacyPackaging = false   // native libraries stay uncompressed and 16 KiB-aligned
        }
    }
}

dependencies {
    implementation("com.google.ai.edge.litertlm:litertlm-android:0.18.0")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.9.0")
    implementation("androidx.appcompat:appcompat:1.7.0")
    implementation("androidx.lifecycle:lifecycle-runtime-ktx:2.8.7")
}
