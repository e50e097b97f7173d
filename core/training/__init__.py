"""Training wing: the trainer loop, the built-in callbacks, the tasks, the data path (in memory and
streamed), model building and DDP. Imports only the floor (trainforge's root modules)."""
