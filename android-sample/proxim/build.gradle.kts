// The Proxim library module: packages what scripts/build-aar.sh produced into an .aar.
//   src/main/jniLibs/<abi>/libproxim.so   cargo-ndk output (arm64-v8a, armeabi-v7a, x86_64)
//   build/generated/uniffi/               Kotlin generated with bindings/uniffi-android.toml
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.proxim.android"
    compileSdk = 35

    defaultConfig {
        minSdk = 24
        consumerProguardFiles("consumer-rules.pro")
    }

    sourceSets {
        getByName("main") {
            java.srcDir(layout.buildDirectory.dir("generated/uniffi"))
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

kotlin {
    jvmToolchain(17)
}

dependencies {
    // uniffi's generated code calls into libproxim.so through JNA; the @aar artifact carries
    // libjnidispatch.so for every ABI.
    api("net.java.dev.jna:jna:5.14.0@aar")
    api("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.8.1")
}
