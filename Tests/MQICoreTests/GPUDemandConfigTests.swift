import Foundation
import Testing
@testable import MQICore

/// A step that needs more GPUs than `hpc.gpus` lists could never start: a config error.
@Suite("Config: step GPU demands against hpc.gpus")
struct GPUDemandConfigTests {
    static func yaml(hpcGPUs: String, stepGPUs: String) -> String {
        """
        scanner: { local_logdata: ./data }
        hpc: { transport: local, gpus: \(hpcGPUs) }
        workflows:
          default_qa:
            - { name: upload_case_files, type: upload }
            - name: run_moqui_sim
              type: execute
              gpus: \(stepGPUs)
        remote_commands:
          run_moqui_sim: "moqui --gpus {gpu_ids}"
        """
    }

    @Test("a step asking for more GPUs than hpc.gpus lists names the step key and line")
    func tooManyGPUs() throws {
        let errors = configErrors(Self.yaml(hpcGPUs: "[0, 1]", stepGPUs: "3"))
        #expect(errors.count == 1, "\(errors)")
        let error = try #require(errors.first)
        #expect(error.keyPath == "workflows.default_qa[1].gpus")
        #expect(error.line == 8)
        #expect(error.message.contains("asks for 3 GPUs but hpc.gpus lists only 2"), "\(errors)")
    }

    @Test("under gpus: { min, max } only min above the count is an error")
    func rangeMinimum() throws {
        let errors = configErrors(Self.yaml(hpcGPUs: "[0, 1]", stepGPUs: "{ min: 3, max: 4 }"))
        #expect(errors.map(\.keyPath) == ["workflows.default_qa[1].gpus"], "\(errors)")
        #expect(errors.first?.line == 8)
        #expect(errors.first?.message.contains("needs at least 3 GPUs (min)") == true, "\(errors)")

        let config = try ConfigLoader.parse(Self.yaml(hpcGPUs: "[0, 1]", stepGPUs: "{ min: 1, max: 4 }"), file: "config.yaml", baseDirectory: "/srv/mqi")
        #expect(config.workflows["default_qa"]?.steps[1].gpuMin == 1)
    }

    @Test("enough GPUs, or hpc.gpus: auto (checked at start), is fine")
    func accepted() throws {
        for (hpc, step) in [("[0, 1, 2]", "3"), ("[0, 1]", "2"), ("auto", "8")] {
            let config = try ConfigLoader.parse(Self.yaml(hpcGPUs: hpc, stepGPUs: step), file: "config.yaml", baseDirectory: "/srv/mqi")
            #expect(config.workflows["default_qa"]?.steps[1].gpuCount == Int(step))
        }
    }
}
