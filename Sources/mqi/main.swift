print("mqi")
