import Foundation
import MQICore
import Testing

/// Parsing `nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total,temperature.gpu
/// --format=csv,noheader,nounits`.
///
/// NOTE: no GPU machine was available when these were written. The fixtures below are written by
/// hand from the documented output format (`nvidia-smi --help-query-gpu`, NVIDIA's nvidia-smi
/// manual) and the shapes drivers are known to print (`[N/A]`, `[Not Supported]`, the NVML error
/// messages, "No devices were found", "Unable to determine the device handle ..."), not captured
/// from real hardware. Memory figures are the MiB totals those boards report.
struct NvidiaSMITests {
    /// One GPU line as the parser should read it (nil = the driver printed no value).
    struct Row: Sendable, CustomStringConvertible {
        var index: Int
        var uuid: String?
        var name: String?
        var utilization: Double?
        var used: Double?
        var total: Double?
        var temperature: Double?

        init(_ index: Int, _ uuid: String?, _ name: String?, _ utilization: Double?, _ used: Double?, _ total: Double?, _ temperature: Double?) {
            self.index = index
            self.uuid = uuid
            self.name = name
            self.utilization = utilization
            self.used = used
            self.total = total
            self.temperature = temperature
        }

        var sample: GPUSample {
            GPUSample(index: index, uuid: uuid, name: name, utilizationPercent: utilization, memoryUsedMB: used,
                      memoryTotalMB: total, temperatureC: temperature)
        }

        var description: String { "GPU \(index)" }
    }

    struct Fixture: Sendable, CustomTestStringConvertible {
        var label: String
        var output: String
        var gpus: [Row]
        /// Substrings, one per expected warning, in order.
        var warnings: [String]

        var testDescription: String { label }
    }

    static let h100UUIDs = [
        "GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7", "GPU-0b6e41d2-7a93-c5f8-1e2d-8b4a6c0f9e31",
        "GPU-c9d27e14-3b58-a6f0-4d1c-92e7b5a80f64", "GPU-7e14f0a3-d2c6-98b5-3a7e-05c1d4f8b296",
        "GPU-2f8c6b91-e0a4-5d37-b9c2-6e1f0a7d3c58", "GPU-94a0d5c7-1f6e-2b83-c7d4-a85e39b0f612",
        "GPU-e6b3a0f8-45d2-c19e-7f30-d2a6b8c4e905", "GPU-18d9c4e6-b7f1-3e0a-85d6-4c2b9f7a01e3",
    ]

    static let fixtures: [Fixture] = [
        Fixture(
            label: "one idle H100",
            output: "0, GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7, NVIDIA H100 80GB HBM3, 0, 0, 81559, 31\n",
            gpus: [Row(0, "GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7", "NVIDIA H100 80GB HBM3", 0, 0, 81559, 31)],
            warnings: []),
        Fixture(
            label: "eight H100s, two busy",
            output: (0..<8).map { i in
                "\(i), \(h100UUIDs[i]), NVIDIA H100 80GB HBM3, \(i == 2 ? 97 : i == 5 ? 43 : 0), \(i == 2 ? 71234 : i == 5 ? 1437 : 0), 81559, \(i == 2 ? 64 : 30 + i)"
            }.joined(separator: "\n") + "\n",
            gpus: (0..<8).map { i in
                Row(i, h100UUIDs[i], "NVIDIA H100 80GB HBM3", i == 2 ? 97 : i == 5 ? 43 : 0, i == 2 ? 71234 : i == 5 ? 1437 : 0, 81559,
                    Double(i == 2 ? 64 : 30 + i))
            },
            warnings: []),
        Fixture(
            label: "A100, V100 and RTX names with spaces and dashes",
            output: """
                0, GPU-3c1f6e0a-82b4-d95c-07a1-e4f2b6c8d093, NVIDIA A100-SXM4-80GB, 100, 79805, 81920, 71
                1, GPU-a74e2d08-6c19-3f5b-b0e7-51d8c2a96f40, NVIDIA A100-PCIE-40GB, 12, 1229, 40960, 38
                2, GPU-6f0b9d31-e7a2-48c5-9d16-2b0e7f4a8c15, Tesla V100-SXM2-32GB, 0, 0, 32768, 35
                3, GPU-d05a8e72-31fc-b6e9-4a08-7c3d1e5f29b6, Tesla V100-PCIE-16GB, 3, 311, 16384, 40
                4, GPU-81e6c4b0-d9a7-2f35-e8c1-06b4a9d7f253, NVIDIA GeForce RTX 4090, 8, 2011, 24564, 45
                5, GPU-4b27f9e5-0c83-a1d6-5f9b-e3a07c6d8b12, NVIDIA RTX A6000, 0, 5, 49140, 29
                6, GPU-e9c50d16-a4b2-7e38-1c6f-d8a9b03e5f74, Quadro RTX 8000, 1, 0, 46080, 33

                """,
            gpus: [
                Row(0, "GPU-3c1f6e0a-82b4-d95c-07a1-e4f2b6c8d093", "NVIDIA A100-SXM4-80GB", 100, 79805, 81920, 71),
                Row(1, "GPU-a74e2d08-6c19-3f5b-b0e7-51d8c2a96f40", "NVIDIA A100-PCIE-40GB", 12, 1229, 40960, 38),
                Row(2, "GPU-6f0b9d31-e7a2-48c5-9d16-2b0e7f4a8c15", "Tesla V100-SXM2-32GB", 0, 0, 32768, 35),
                Row(3, "GPU-d05a8e72-31fc-b6e9-4a08-7c3d1e5f29b6", "Tesla V100-PCIE-16GB", 3, 311, 16384, 40),
                Row(4, "GPU-81e6c4b0-d9a7-2f35-e8c1-06b4a9d7f253", "NVIDIA GeForce RTX 4090", 8, 2011, 24564, 45),
                Row(5, "GPU-4b27f9e5-0c83-a1d6-5f9b-e3a07c6d8b12", "NVIDIA RTX A6000", 0, 5, 49140, 29),
                Row(6, "GPU-e9c50d16-a4b2-7e38-1c6f-d8a9b03e5f74", "Quadro RTX 8000", 1, 0, 46080, 33),
            ],
            warnings: []),
        Fixture(
            label: "[N/A] and [Not Supported] fields (MIG mode, consumer boards)",
            output: """
                0, GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7, NVIDIA H100 80GB HBM3, [N/A], 13, 81559, 33
                1, GPU-0b6e41d2-7a93-c5f8-1e2d-8b4a6c0f9e31, NVIDIA GeForce GTX 1080 Ti, [Not Supported], 213, 11264, [N/A]
                2, GPU-c9d27e14-3b58-a6f0-4d1c-92e7b5a80f64, NVIDIA A100-SXM4-40GB, [N/A], [N/A], [N/A], [N/A]

                """,
            gpus: [
                Row(0, "GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7", "NVIDIA H100 80GB HBM3", nil, 13, 81559, 33),
                Row(1, "GPU-0b6e41d2-7a93-c5f8-1e2d-8b4a6c0f9e31", "NVIDIA GeForce GTX 1080 Ti", nil, 213, 11264, nil),
                Row(2, "GPU-c9d27e14-3b58-a6f0-4d1c-92e7b5a80f64", "NVIDIA A100-SXM4-40GB", nil, nil, nil, nil),
            ],
            warnings: []),
        Fixture(
            label: "[Unknown Error] and [GPU requires reset] are missing values, not numbers",
            output: """
                0, GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7, NVIDIA H100 80GB HBM3, [Unknown Error], [Unknown Error], 81559, [Unknown Error]
                1, GPU-0b6e41d2-7a93-c5f8-1e2d-8b4a6c0f9e31, NVIDIA H100 80GB HBM3, [GPU requires reset], 0, 81559, 30

                """,
            gpus: [
                Row(0, "GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7", "NVIDIA H100 80GB HBM3", nil, nil, 81559, nil),
                Row(1, "GPU-0b6e41d2-7a93-c5f8-1e2d-8b4a6c0f9e31", "NVIDIA H100 80GB HBM3", nil, 0, 81559, 30),
            ],
            warnings: []),
        Fixture(
            label: "GPU 1 fell off the bus: missing from the middle with the driver's message",
            output: """
                0, GPU-3c1f6e0a-82b4-d95c-07a1-e4f2b6c8d093, NVIDIA A100-SXM4-80GB, 0, 4, 81920, 30
                Unable to determine the device handle for GPU0000:47:00.0: Unknown Error
                2, GPU-6f0b9d31-e7a2-48c5-9d16-2b0e7f4a8c15, NVIDIA A100-SXM4-80GB, 0, 4, 81920, 31
                3, GPU-d05a8e72-31fc-b6e9-4a08-7c3d1e5f29b6, NVIDIA A100-SXM4-80GB, 0, 4, 81920, 29

                """,
            gpus: [
                Row(0, "GPU-3c1f6e0a-82b4-d95c-07a1-e4f2b6c8d093", "NVIDIA A100-SXM4-80GB", 0, 4, 81920, 30),
                Row(2, "GPU-6f0b9d31-e7a2-48c5-9d16-2b0e7f4a8c15", "NVIDIA A100-SXM4-80GB", 0, 4, 81920, 31),
                Row(3, "GPU-d05a8e72-31fc-b6e9-4a08-7c3d1e5f29b6", "NVIDIA A100-SXM4-80GB", 0, 4, 81920, 29),
            ],
            warnings: ["Unable to determine the device handle for GPU0000:47:00.0"]),
        Fixture(
            label: "GPU 1 missing from the middle, silently (CUDA_VISIBLE_DEVICES-style gap)",
            output: """
                0, GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7, NVIDIA H100 80GB HBM3, 0, 0, 81559, 31
                2, GPU-c9d27e14-3b58-a6f0-4d1c-92e7b5a80f64, NVIDIA H100 80GB HBM3, 0, 0, 81559, 32

                """,
            gpus: [
                Row(0, "GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7", "NVIDIA H100 80GB HBM3", 0, 0, 81559, 31),
                Row(2, "GPU-c9d27e14-3b58-a6f0-4d1c-92e7b5a80f64", "NVIDIA H100 80GB HBM3", 0, 0, 81559, 32),
            ],
            warnings: []),
        Fixture(
            label: "Windows nvidia-smi.exe: CRLF line endings",
            output: "0, GPU-81e6c4b0-d9a7-2f35-e8c1-06b4a9d7f253, NVIDIA GeForce RTX 3090, 7, 1024, 24576, 44\r\n"
                + "1, GPU-4b27f9e5-0c83-a1d6-5f9b-e3a07c6d8b12, NVIDIA RTX A5000, 0, 0, 24564, 36\r\n",
            gpus: [
                Row(0, "GPU-81e6c4b0-d9a7-2f35-e8c1-06b4a9d7f253", "NVIDIA GeForce RTX 3090", 7, 1024, 24576, 44),
                Row(1, "GPU-4b27f9e5-0c83-a1d6-5f9b-e3a07c6d8b12", "NVIDIA RTX A5000", 0, 0, 24564, 36),
            ],
            warnings: []),
        Fixture(
            label: "header line (command configured without noheader)",
            output: """
                index, uuid, name, utilization.gpu [%], memory.used [MiB], memory.total [MiB], temperature.gpu
                0, GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7, NVIDIA H100 80GB HBM3, 0, 0, 81559, 31

                """,
            gpus: [Row(0, "GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7", "NVIDIA H100 80GB HBM3", 0, 0, 81559, 31)],
            warnings: []),
        Fixture(
            label: "units left in (command configured without nounits)",
            output: """
                index, uuid, name, utilization.gpu [%], memory.used [MiB], memory.total [MiB], temperature.gpu
                0, GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7, NVIDIA H100 80GB HBM3, 45 %, 1024 MiB, 81559 MiB, 52
                1, GPU-0b6e41d2-7a93-c5f8-1e2d-8b4a6c0f9e31, NVIDIA H100 80GB HBM3, [N/A], 0 MiB, 81559 MiB, 30

                """,
            gpus: [
                Row(0, "GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7", "NVIDIA H100 80GB HBM3", 45, 1024, 81559, 52),
                Row(1, "GPU-0b6e41d2-7a93-c5f8-1e2d-8b4a6c0f9e31", "NVIDIA H100 80GB HBM3", nil, 0, 81559, 30),
            ],
            warnings: []),
        Fixture(
            label: "NVML driver/library mismatch",
            output: "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 550.54\n",
            gpus: [],
            warnings: ["Failed to initialize NVML: Driver/library version mismatch", "NVML library version: 550.54"]),
        Fixture(
            label: "driver not loaded",
            output: "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.\n\n",
            gpus: [],
            warnings: ["NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"]),
        Fixture(
            label: "no devices",
            output: "No devices were found\n",
            gpus: [],
            warnings: ["No devices were found"]),
        Fixture(
            label: "empty output",
            output: "",
            gpus: [],
            warnings: []),
        Fixture(
            label: "only blank lines and spaces",
            output: "\n   \n\t\n",
            gpus: [],
            warnings: []),
        Fixture(
            label: "garbage: shell noise, a short line, a bad index, a negative index",
            output: """
                sh: 1: nvidia-smi: not found
                0, GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7, NVIDIA H100 80GB HBM3
                x, GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7, NVIDIA H100 80GB HBM3, 0, 0, 81559, 31
                -1, GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7, NVIDIA H100 80GB HBM3, 0, 0, 81559, 31
                \u{1B}[31m\u{0}\u{FFFD}\u{FFFD},,,,,,,
                1, GPU-0b6e41d2-7a93-c5f8-1e2d-8b4a6c0f9e31, NVIDIA H100 80GB HBM3, 2, 517, 81559, 34

                """,
            gpus: [Row(1, "GPU-0b6e41d2-7a93-c5f8-1e2d-8b4a6c0f9e31", "NVIDIA H100 80GB HBM3", 2, 517, 81559, 34)],
            warnings: ["nvidia-smi: not found", "NVIDIA H100 80GB HBM3", "x, GPU-", "-1, GPU-", ",,,,,,,"]),
        Fixture(
            label: "garbage numbers are missing values, never a crash",
            output: "0, GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7, NVIDIA H100 80GB HBM3, lots, -5, nan, inf\n",
            gpus: [Row(0, "GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7", "NVIDIA H100 80GB HBM3", nil, nil, nil, nil)],
            warnings: []),
        Fixture(
            label: "a GPU listed twice keeps the first",
            output: """
                0, GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7, NVIDIA H100 80GB HBM3, 0, 0, 81559, 31
                0, GPU-0b6e41d2-7a93-c5f8-1e2d-8b4a6c0f9e31, NVIDIA H100 80GB HBM3, 99, 80000, 81559, 80

                """,
            gpus: [Row(0, "GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7", "NVIDIA H100 80GB HBM3", 0, 0, 81559, 31)],
            warnings: ["GPU 0 listed twice"]),
    ]

    @Test(arguments: fixtures)
    func parses(_ fixture: Fixture) {
        let parsed = NvidiaSMI.parse(fixture.output)
        #expect(parsed.gpus == fixture.gpus.map(\.sample), "\(fixture.label)")
        #expect(parsed.warnings.count == fixture.warnings.count, "\(fixture.label): \(parsed.warnings)")
        for (warning, expected) in zip(parsed.warnings, fixture.warnings) {
            #expect(warning.contains(expected), "\(fixture.label): warning \(String(reflecting: warning)) should mention \(String(reflecting: expected))")
        }
    }

    /// Warnings say which line they are about and never carry a whole flood of output.
    @Test func warningsNameTheLineAndAreShort() throws {
        let long = String(repeating: "garbage ", count: 5_000)
        let parsed = NvidiaSMI.parse("0, GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7, NVIDIA H100 80GB HBM3, 0, 0, 81559, 31\n\(long)\n")
        #expect(parsed.gpus.map(\.index) == [0])
        let warning = try #require(parsed.warnings.first)
        #expect(warning.contains("line 2"), "\(warning)")
        #expect(warning.count < 400)
    }

    /// Whatever bytes come back (a binary, a truncated read), the parser returns.
    @Test func randomBytesNeverCrash() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let length = Int.random(in: 0..<400, using: &generator)
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let text = String(decoding: bytes, as: UTF8.self)
            let parsed = NvidiaSMI.parse(text)
            #expect(parsed.gpus.allSatisfy { $0.index >= 0 })
        }
        // Random lines that look almost right.
        let pieces = ["0", "1", "-1", "", " ", "[N/A]", "[Not Supported]", "GPU-x", "NVIDIA H100 80GB HBM3", "12 %", "81559 MiB", "\u{0}", "99999999999999999999"]
        for _ in 0..<300 {
            let line = (0..<Int.random(in: 0...9, using: &generator)).map { _ in pieces.randomElement(using: &generator)! }.joined(separator: ",")
            let parsed = NvidiaSMI.parse(line + "\n" + line)
            #expect(parsed.gpus.count <= 1)
            #expect(parsed.gpus.allSatisfy { sample in
                [sample.utilizationPercent, sample.memoryUsedMB, sample.memoryTotalMB, sample.temperatureC].allSatisfy { $0 == nil || ($0!.isFinite && $0! >= 0) }
            })
        }
    }
}
