#!/usr/bin/env bash
# Build the Proxim Android library (.aar): libproxim.so for arm64-v8a, armeabi-v7a and x86_64
# (cargo-ndk), Kotlin bindings generated with the Android uniffi config, packaged by the Gradle
# library module android-sample/proxim. Output: target/android/proxim-release.aar.
#
# Needs: the Android NDK, the Android SDK (platform 35), the three Rust Android targets,
# cargo-ndk 4.x, Gradle 8.9+ and JDK 17. Everything is checked first; if anything is missing the
# script stops at once and says exactly what to install.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
MODULE=android-sample/proxim
ABIS=(arm64-v8a armeabi-v7a x86_64)
RUST_TARGETS=(aarch64-linux-android armv7-linux-androideabi x86_64-linux-android)
MIN_SDK=24

# ---------------------------------------------------------------------------------------------
# Prerequisites: all checked before anything is built
# ---------------------------------------------------------------------------------------------

missing=()

sdk=${ANDROID_HOME:-${ANDROID_SDK_ROOT:-}}
if [ -z "$sdk" ] || [ ! -d "$sdk/platforms" ]; then
    missing+=("the Android SDK with platform 35: install the command-line tools
      (https://developer.android.com/studio#command-line-tools-only), then
        sdkmanager 'platform-tools' 'platforms;android-35' 'build-tools;35.0.0'
      and export ANDROID_HOME=<sdk dir>")
fi

ndk=${ANDROID_NDK_HOME:-${ANDROID_NDK_ROOT:-}}
if [ -z "$ndk" ] && [ -n "$sdk" ] && [ -d "$sdk/ndk" ]; then
    ndk=$(find "$sdk/ndk" -mindepth 1 -maxdepth 1 -type d | sort -V | tail -n1)
fi
if [ -z "$ndk" ] || [ ! -d "$ndk/toolchains/llvm" ]; then
    missing+=("the Android NDK (r26 or newer):
        sdkmanager 'ndk;27.2.12479018'
      and export ANDROID_NDK_HOME=\$ANDROID_HOME/ndk/27.2.12479018")
fi

installed_targets=$(rustup target list --installed 2>/dev/null || true)
absent_targets=()
for t in "${RUST_TARGETS[@]}"; do
    grep -qx "$t" <<<"$installed_targets" || absent_targets+=("$t")
done
if [ ${#absent_targets[@]} -gt 0 ]; then
    missing+=("the Rust Android targets:
        rustup target add ${absent_targets[*]}")
fi

if ! cargo ndk --version >/dev/null 2>&1; then
    missing+=("cargo-ndk 4.x:
        cargo install cargo-ndk --version '^4' --locked")
fi

if [ -x android-sample/gradlew ]; then
    gradle=(android-sample/gradlew -p android-sample)
elif command -v gradle >/dev/null; then
    gradle=(gradle -p android-sample)
else
    gradle=()
    missing+=("Gradle 8.9 or newer (https://gradle.org/install/), or a wrapper:
        gradle -p android-sample wrapper --gradle-version 8.10.2")
fi

if ! javac -version 2>&1 | grep -Eq 'javac (17|2[0-9])'; then
    missing+=("a JDK 17 or newer (javac):
        apt-get install -y openjdk-17-jdk-headless")
fi

if [ ${#missing[@]} -gt 0 ]; then
    echo "build-aar: cannot build the Android library; install first:" >&2
    for m in "${missing[@]}"; do
        echo "  - $m" >&2
    done
    exit 2
fi

# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------

export ANDROID_NDK_HOME=$ndk ANDROID_HOME=$sdk
echo "sdk.dir=$sdk" >android-sample/local.properties

echo "== cargo ndk: ${ABIS[*]} (release)"
rm -rf "$MODULE/src/main/jniLibs"
ndk_args=()
for abi in "${ABIS[@]}"; do
    ndk_args+=(-t "$abi")
done
cargo ndk "${ndk_args[@]}" --platform "$MIN_SDK" -o "$MODULE/src/main/jniLibs" \
    build --release --locked -p proxim-bindings

echo "== Kotlin bindings (Android config)"
cargo build --locked -p proxim-bindings --features cli --bin uniffi-bindgen
generated=$MODULE/build/generated/uniffi
rm -rf "$generated"
"$TARGET_DIR/debug/uniffi-bindgen" generate \
    --library "$TARGET_DIR/aarch64-linux-android/release/libproxim.so" \
    --language kotlin --config bindings/uniffi-android.toml --no-format --out-dir "$generated"

echo "== Gradle: :proxim:assembleRelease"
"${gradle[@]}" :proxim:assembleRelease

mkdir -p "$TARGET_DIR/android"
cp "$MODULE/build/outputs/aar/proxim-release.aar" "$TARGET_DIR/android/proxim-release.aar"
echo "built $TARGET_DIR/android/proxim-release.aar"
