import MQIServices

/// Configs shared by the tests.
public enum SampleConfigs {
    /// The original design's config, as the pipeline issue gives it: upload, the interpreter and
    /// MOQUI on a GPU, download; GPUs 0 and 1.
    public static let issueExample = """
        scanner:
          local_logdata: ./data/local_logdata
          ready_marker: _CASE_READY
          quiet_period_sec: 5
          rescan_interval_sec: 30
          workflow: default_qa
        state:
          database: ./var/mqi.sqlite
          pid_file: ./var/mqi.pid
          logs_dir: ./var/logs
        hpc:
          transport: local
          gpus: [0, 1]
        conductor:
          monitor_interval_sec: 60
          remote_paths: { upload_dir: ./hpc/upload, download_dir: ./hpc/download }
          results_dir: ./var/results
        workflows:
          default_qa:
            - { name: upload_case_files, type: upload,   progress: 10 }
            - { name: run_interpreter,   type: execute,  progress: 30 }
            - { name: run_moqui_sim,     type: execute,  progress: 70, timeout_sec: 3600 }
            - { name: download_results,  type: download, progress: 90 }
        remote_commands:
          run_interpreter: "python3 /opt/mqi/interpreter.py --case {case_id} --gpu {gpu_id}"
          run_moqui_sim:   "/opt/mqi/moquisim --case-dir {case_dir} --out {result_dir} --gpu {gpu_id}"
        retry: { max_attempts: 3, initial_delay_sec: 1, max_delay_sec: 60, multiplier: 2 }
        logging: { level: info }
        """

    /// A daemon-level test's site, paths relative to the config file: cases in `./data`, state
    /// under `./var`, the local transport, and `default_qa`: upload, `simStep` running
    /// `simCommand` (a step command, quoted here), download, then `localStep` where given; metrics
    /// on a free port (or none), no GPU monitor. `scanner` holds the scanner's keys after
    /// `local_logdata` and `ready_marker`, `simKeys` and `localStep.keys` a step's keys after its
    /// progress, `extra` whole top-level sections.
    public static func localSite(simCommand: String, simStep: String = "run_moqui_sim", simKeys: String = "",
                                 scanner: String = "rescan_interval_sec: 5", gpus: [Int] = [0],
                                 localStep: (name: String, keys: String, command: String)? = nil,
                                 retryAttempts: Int? = nil, metrics: Bool = true, extra: String = "") -> String {
        func padded(_ text: String, _ width: Int) -> String { text + String(repeating: " ", count: max(0, width - text.count)) }
        func step(_ name: String, _ type: String, _ progress: Int, _ keys: String = "") -> String {
            "    - { name: \(padded(name + ",", 18)) type: \(padded(type + ",", 9)) progress: \(progress)\(keys.isEmpty ? "" : ", " + keys) }"
        }
        func command(_ name: String, _ text: String) -> String { "  \(name): \"\(DemoSite.yamlEscaped(text))\"" }
        var lines = [
            "scanner: { local_logdata: ./data, ready_marker: _CASE_READY, \(scanner) }",
            "state: { database: ./var/mqi.sqlite, pid_file: ./var/mqi.pid, logs_dir: ./var/logs }",
            "hpc: { transport: local, gpus: [\(gpus.map(String.init).joined(separator: ", "))] }",
            "conductor:",
            "  remote_paths: { upload_dir: ./hpc/upload, download_dir: ./hpc/download }",
            "  results_dir: ./var/results",
            "workflows:",
            "  default_qa:",
            step("upload_case_files", "upload", 10),
            step(simStep, "execute", 50, simKeys),
            step("download_results", "download", localStep == nil ? 90 : 80),
        ]
        if let localStep { lines.append(step(localStep.name, "local", 90, localStep.keys)) }
        lines += ["remote_commands:", command(simStep, simCommand)]
        if let localStep { lines.append(command(localStep.name, localStep.command)) }
        if let retryAttempts {
            lines.append("retry: { max_attempts: \(retryAttempts), initial_delay_sec: 0.1, max_delay_sec: 1, multiplier: 2 }")
        }
        lines += [metrics ? "metrics: { port: 0 }" : "metrics: { enabled: false }", "gpu_monitor: { enabled: false }"]
        if !extra.isEmpty { lines.append(extra) }
        return lines.joined(separator: "\n")
    }
}
