import Foundation
import Testing
@testable import MQICore

/// `hpc.executor: slurm` and `hpc.slurm`: loaded with defaults, errors naming the key and line,
/// and a Conductor that reserves no GPU id and renders device ordinals.
@Suite("Config and Conductor: the Slurm executor")
struct SlurmConfigTests {
    static func yaml(_ hpc: String, stepGPUs: String = "2") -> String {
        """
        scanner: { local_logdata: ./data }
        \(hpc)
        workflows:
          default_qa:
            - { name: upload_case_files, type: upload }
            - name: run_moqui_sim
              type: execute
              gpus: \(stepGPUs)
              timeout_sec: 90
        remote_commands:
          run_moqui_sim: "moqui --gpus {gpu_ids} --count {gpu_count}"
        """
    }

    @Test("executor: slurm loads its section; hpc.gpus may be left out, and a step's GPU demand is Slurm's to judge")
    func loadsWithDefaults() throws {
        let config = try ConfigLoader.parse(Self.yaml("""
            hpc:
              transport: local
              executor: slurm
              slurm: { partition: gpu, extra_args: ["--mem=8G"] }
            """, stepGPUs: "4"), file: "config.yaml", baseDirectory: "/srv/mqi")
        #expect(config.hpc.executor == .slurm)
        #expect(config.hpc.gpus.isEmpty)
        #expect(config.hpc.slurm == SlurmConfig(partition: "gpu", maxJobs: 32, pollIntervalSec: 5, extraArgs: ["--mem=8G"]))
        let direct = try ConfigLoader.parse(Self.yaml("hpc: { transport: local, gpus: [0, 1, 2, 3] }"), file: "config.yaml", baseDirectory: "/srv/mqi")
        #expect(direct.hpc.executor == .direct)
    }

    @Test("a wrong executor or slurm key names the key and its line")
    func errorsNameTheKey() throws {
        let unknown = configErrors(Self.yaml("hpc: { transport: local, executor: kubernetes }"))
        #expect(unknown.contains { $0.keyPath == "hpc.executor" && $0.line == 2 && $0.message.contains("direct, slurm") }, "\(unknown)")
        let bad = configErrors(Self.yaml("""
            hpc:
              executor: slurm
              slurm: { max_jobs: 0, extra_args: "--mem=8G", nodes: 3 }
            """))
        #expect(bad.contains { $0.keyPath == "hpc.slurm.max_jobs" && $0.line == 4 }, "\(bad)")
        #expect(bad.contains { $0.keyPath == "hpc.slurm.extra_args" }, "\(bad)")
        #expect(bad.contains { $0.keyPath.contains("nodes") }, "\(bad)")
    }

    @Test("under Slurm the Conductor reserves nothing, asks for the step's GPU count and renders ordinals 0..N-1")
    func conductorLeavesPlacementToSlurm() throws {
        var config = try ConfigLoader.parse(Self.yaml("hpc: { transport: local, executor: slurm }"), file: "config.yaml", baseDirectory: "/srv/mqi")
        let conductor = Conductor(config: config)
        #expect(conductor.schedulerPlacesGPUs)
        let atUpload = CaseState(caseId: "c", status: .processing, workflow: "default_qa", stepIndex: 0, attempt: 1, progress: 10)
        // No GPU is free at all: under Slurm that does not matter.
        let decision = conductor.decide(atUpload, .stepSucceeded(stepIndex: 0, attempt: 1), gpus: GPUAvailability(free: []))
        #expect(decision.state.status == .processing)
        #expect(decision.reserve.isEmpty && decision.state.gpuIds.isEmpty)
        let command = try #require(decision.commands.first)
        #expect(command.kind == .executeCommand)
        #expect(command.body.gpuCount == 2)
        #expect(command.body.gpuIds ?? [] == [])
        #expect(command.body.command == "moqui --gpus '0,1' --count '2'", "\(command.body.command ?? "")")

        // The direct executor reserves, as before.
        config.hpc.executor = .direct
        config.hpc.gpus = [3, 5]
        let direct = Conductor(config: config).decide(atUpload, .stepSucceeded(stepIndex: 0, attempt: 1), gpus: GPUAvailability(free: [3, 5]))
        #expect(direct.reserve == [3, 5])
        #expect(direct.commands.first?.body.command == "moqui --gpus '3,5' --count '2'")
        #expect(direct.commands.first?.body.gpuCount == nil)
    }
}
