// swift-tools-version: 6.2
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
]

// Linux only: tworker reads /proc, uses Linux's process and signal calls (prctl, flock on
// pid files, setsid children) and links Debian's libhiredis; it declares no Apple platform.
let package = Package(
    name: "tworker",
    products: [
        .executable(name: "tworker", targets: ["tworker"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/swift-mustache", from: "2.1.1"),
    ],
    targets: [
        .systemLibrary(
            name: "CHiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        .target(
            name: "RedisClient",
            dependencies: [
                "CHiredis",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "TWorkerCore",
            dependencies: [
                "RedisClient",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Mustache", package: "swift-mustache"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "tworker",
            dependencies: [
                "TWorkerCore",
                "RedisClient",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "TWorkerTestSupport",
            dependencies: [
                "RedisClient",
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            path: "Tests/TWorkerTestSupport",
            swiftSettings: strict
        ),
        .testTarget(
            name: "RedisClientTests",
            dependencies: ["RedisClient", "TWorkerTestSupport"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "TWorkerCoreTests",
            dependencies: ["TWorkerCore", "RedisClient", "TWorkerTestSupport"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "TWorkerEndToEndTests",
            dependencies: ["TWorkerCore", "RedisClient", "TWorkerTestSupport"],
            swiftSettings: strict
        ),
    ]
)
