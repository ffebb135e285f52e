package vmm

import "fmt"

// Choose decides which driver runs the guests, the way the daemon does at
// start and `ember doctor` reports it: Firecracker where its binary exists
// and the accelerator probe says KVM boots the default template's kernel,
// QEMU otherwise. configured is "firecracker", "qemu" or "" (automatic);
// fcOK and fcWhy say whether the firecracker binary exists and why (as
// firecracker.Available does); kvmBoots runs the probe, and is called only
// when Firecracker is a candidate. It returns the driver's name and why,
// or an error saying why the configured driver cannot run here.
func Choose(configured string, fcOK bool, fcWhy string, kvmBoots func() (bool, string, error)) (name, reason string, err error) {
	switch configured {
	case "":
		if !fcOK {
			return "qemu", "automatic: " + fcWhy, nil
		}
		ok, why, err := kvmBoots()
		if err != nil {
			return "", "", err
		}
		if ok {
			return "firecracker", "automatic: " + fcWhy + "; " + why, nil
		}
		return "qemu", "automatic: " + fcWhy + " found, but " + why, nil
	case "firecracker":
		if !fcOK {
			return "", "", fmt.Errorf("vmm firecracker: %s", fcWhy)
		}
		ok, why, err := kvmBoots()
		if err != nil {
			return "", "", err
		}
		if !ok {
			return "", "", fmt.Errorf("vmm firecracker: %s", why)
		}
		return "firecracker", "configured: " + fcWhy + "; " + why, nil
	case "qemu":
		return "qemu", "configured", nil
	}
	return "", "", fmt.Errorf("vmm %q: want firecracker, qemu or empty for automatic", configured)
}
