print("mqi-bench: not written yet")
