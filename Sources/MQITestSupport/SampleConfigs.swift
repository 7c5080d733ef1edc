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
}
