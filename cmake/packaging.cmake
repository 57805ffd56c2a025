# Installed layout and the Debian package (docs/debian.md).
#
#   cmake --preset release && cmake --build --preset release
#   cd build/release && cpack -G DEB        # spiffe-tunnel_<version>_<arch>.deb
#
# CPack installs with prefix /usr: the binary lands in /usr/bin. Files that belong to fixed
# system paths (units, /etc, sysusers.d, modules-load.d) use absolute destinations.

set(_deb_dir ${CMAKE_SOURCE_DIR}/deploy/debian)

install(FILES ${CMAKE_SOURCE_DIR}/deploy/systemd/spiffe-tunnel.service
              ${CMAKE_SOURCE_DIR}/deploy/systemd/spiffe-tunnel.socket
        DESTINATION /lib/systemd/system)
install(FILES ${_deb_dir}/config.yaml DESTINATION /etc/spiffe-tunnel)
install(FILES ${_deb_dir}/sysusers.conf DESTINATION lib/sysusers.d
        RENAME spiffe-tunnel.conf)
install(FILES ${_deb_dir}/modules-load.conf DESTINATION lib/modules-load.d
        RENAME spiffe-tunnel.conf)
install(FILES ${_deb_dir}/copyright DESTINATION share/doc/spiffe-tunnel)

# spiffe-tunnel(8), generated from the --help of the program and each subcommand, so the page
# never lags behind the flags; and the Debian changelog. Both gzipped reproducibly (no mtime).
find_package(Python3 REQUIRED COMPONENTS Interpreter)
set(_man ${CMAKE_BINARY_DIR}/debian/spiffe-tunnel.8.gz)
set(_changelog ${CMAKE_BINARY_DIR}/debian/changelog.Debian.gz)
configure_file(${_deb_dir}/changelog.in ${CMAKE_BINARY_DIR}/debian/changelog @ONLY)
add_custom_command(
  OUTPUT ${_man}
  COMMAND ${Python3_EXECUTABLE} ${CMAKE_SOURCE_DIR}/scripts/gen-manpage.py
          $<TARGET_FILE:spiffe-tunnel> ${PROJECT_VERSION} ${_man}
  DEPENDS spiffe-tunnel ${CMAKE_SOURCE_DIR}/scripts/gen-manpage.py
  COMMENT "Generating spiffe-tunnel(8)")
add_custom_command(
  OUTPUT ${_changelog}
  COMMAND gzip -9nc ${CMAKE_BINARY_DIR}/debian/changelog > ${_changelog}
  DEPENDS ${CMAKE_BINARY_DIR}/debian/changelog)
# Part of the default build, except in sanitizer builds (whose binary is not packaged).
if(SPIFFE_TUNNEL_SANITIZE)
  add_custom_target(package_docs DEPENDS ${_man} ${_changelog})
else()
  add_custom_target(package_docs ALL DEPENDS ${_man} ${_changelog})
endif()
install(FILES ${_man} DESTINATION share/man/man8)
install(FILES ${_changelog} DESTINATION share/doc/spiffe-tunnel)

set(CPACK_PACKAGE_NAME spiffe-tunnel)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR "spiffe-tunnel")
set(CPACK_PACKAGE_CONTACT "spiffe-tunnel maintainers <maintainers@spiffe-tunnel.example>"
    CACHE STRING "Maintainer of the Debian package")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "SPIFFE-aware mutual TLS tunnel daemon")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES TRUE)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://spiffe-tunnel.example/")
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# adduser: the postinst's fallback when systemd-sysusers is absent.
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "spire-agent")
# The extended description; CPack puts the summary above it and formats it for the control file.
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "spiffe-tunnel links services across sites with mutual TLS and SPIFFE
identities. A server tunnel accepts mTLS and forwards plain TCP to a local
target; a client tunnel accepts plain TCP and forwards it over mTLS. One
process runs many tunnels, each presenting its own SVID and verifying every
peer against the bundle of the peer's own trust domain.

Identities come from the SPIFFE Workload API (a SPIRE agent) or from PEM
files. The data path uses kernel TLS and splice() where the kernel allows.
This package ships the daemon, a hardened systemd unit (Type=notify with a
watchdog), an example configuration and a system user.")
configure_file(${_deb_dir}/conffiles.in ${CMAKE_BINARY_DIR}/debian/conffiles @ONLY)
foreach(script postinst prerm postrm)
  configure_file(${_deb_dir}/${script} ${CMAKE_BINARY_DIR}/debian/${script} COPYONLY)
endforeach()
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_BINARY_DIR}/debian/conffiles ${CMAKE_BINARY_DIR}/debian/postinst
    ${CMAKE_BINARY_DIR}/debian/prerm ${CMAKE_BINARY_DIR}/debian/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)
set(CPACK_GENERATOR DEB)
include(CPack)
